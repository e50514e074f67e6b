import sys
print("runner-test:", sys.implementation.name, "ok")
