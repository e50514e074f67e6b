import platform
import sys

print(f"Hello from Python {platform.python_version()} inside a Runner Codes microVM")
print(f"kernel {platform.release()}, {sys.platform}")
