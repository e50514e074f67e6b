.( runner-test: forth ok) cr
