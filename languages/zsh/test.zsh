lang=zsh
print "runner-test: ${lang} ok"
