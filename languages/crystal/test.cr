puts "runner-test: crystal ok"
