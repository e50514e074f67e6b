BEGIN { print "runner-test: awk ok" }
