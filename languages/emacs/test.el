(princ "runner-test: emacs ok\n")
