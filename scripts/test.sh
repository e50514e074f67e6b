#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh Debian machine (as root), then
# runs lint, typecheck and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test
npm run typecheck
npm run lint
npm test
