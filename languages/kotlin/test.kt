fun main() {
    println("runner-test: kotlin ok")
}
