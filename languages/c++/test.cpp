#include <iostream>
#include <string>

int main() {
    std::string lang = "c++";
    std::cout << "runner-test: " << lang << " ok" << std::endl;
    return 0;
}
