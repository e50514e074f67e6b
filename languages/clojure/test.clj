(println "runner-test: clojure ok")
