class Main {
    static function main() {
        Sys.println("runner-test: haxe ok");
    }
}
