cat("runner-test: rscript ok\n")
