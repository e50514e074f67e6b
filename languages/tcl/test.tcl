puts "runner-test: tcl ok"
