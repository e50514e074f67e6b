import std.stdio;

void main() {
    writeln("runner-test: d ok");
}
