println "runner-test: groovy ok"
