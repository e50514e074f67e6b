(display "runner-test: scheme ok")
(newline)
