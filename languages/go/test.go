package main

import "fmt"

func main() {
	fmt.Println("runner-test:", "go", "ok")
}
