print("runner-test: lua ok")
