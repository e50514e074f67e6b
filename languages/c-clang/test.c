#include <stdio.h>

int main(void) {
    printf("runner-test: %s ok\n", "c-clang");
    return 0;
}
