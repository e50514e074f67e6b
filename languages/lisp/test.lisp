(format t "runner-test: lisp ok~%")
