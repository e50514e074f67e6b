lang = "ruby"
puts "runner-test: #{lang} ok"
