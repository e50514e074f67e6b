val () = print "runner-test: sml ok\n";
