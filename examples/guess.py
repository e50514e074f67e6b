# An interactive program: `npx runner run examples/guess.py` and play; your typing reaches it
# live, and its output appears as it is printed.
import random

secret = random.randint(1, 100)
print("I picked a number from 1 to 100. Your guess?", flush=True)
for tries in range(1, 11):
    try:
        guess = int(input())
    except (EOFError, ValueError):
        print("bye", flush=True)
        break
    if guess == secret:
        print(f"Yes, {secret}, in {tries} tries.", flush=True)
        break
    print("higher" if guess < secret else "lower", flush=True)
else:
    print(f"It was {secret}.", flush=True)
