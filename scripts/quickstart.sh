#!/usr/bin/env bash
# The README's main command: sets up this Debian machine (as root), builds the guest kernel and
# the python image, and runs examples/hello.py in a microVM, showing progress on the long steps.
set -euo pipefail
cd "$(dirname "$0")/.."
step() { printf '\n==> %s\n' "$*"; }

step "Installing system packages and npm dependencies"
bash scripts/setup.sh

step "Building the guest kernel and the python image (first time: a few minutes)"
npx runner images build python

step "Checking the machine"
npx runner doctor || true

step "Running examples/hello.py in a microVM (the first run boots once to take a snapshot)"
npx runner run examples/hello.py
