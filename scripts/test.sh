#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine (as root), then
# runs lint, typecheck and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
# Typecheck and lint side by side (one core each); both must pass, and each one's output is
# printed whole, after it ends.
logs=$(mktemp -d)
npm run typecheck > "$logs/typecheck" 2>&1 & typecheck=$!
npm run lint > "$logs/lint" 2>&1 & lint=$!
status=0
wait "$typecheck" || status=1
cat "$logs/typecheck"
wait "$lint" || status=1
cat "$logs/lint"
rm -rf "$logs"
if ((status)); then
  echo "test: the typecheck or the lint failed (above)" >&2
  exit 1
fi
npm test
