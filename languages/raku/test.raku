say "runner-test: raku ok";
