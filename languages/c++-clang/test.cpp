#include <iostream>
#include <string>

int main() {
    std::string name = "c++-clang";
    std::cout << "runner-test: " << name << " ok" << std::endl;
}
