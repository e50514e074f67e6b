#include <stdio.h>
#include <objc/objc.h>

@interface Greeter
+ (const char *)name;
@end

@implementation Greeter
+ (const char *)name { return "objective-c"; }
@end

int main(void) {
    printf("runner-test: %s ok\n", [Greeter name]);
    return 0;
}
