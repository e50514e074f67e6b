import sys
print("runner-test:", sys.implementation.name.replace("cpython", "python"), "ok")
