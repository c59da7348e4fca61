#!/usr/bin/env bash
# Runs the official Node SDK (@cmdop/node, unchanged) against our control
# plane and agent. Needs `npm ci`/`npm install` done in this folder (the
# test script does it) and target/debug/cmdop built.
set -euo pipefail
cd "$(dirname "$0")/../../.."
# Builds live in this checkout's target/ (the paths below assume it),
# whatever CARGO_TARGET_DIR the environment sets.
export CARGO_TARGET_DIR="$PWD/target"
. tests/harness.sh

[ -d tests/interop/node/node_modules/@cmdop/node ] || (cd tests/interop/node && npm install --no-audit --no-fund --loglevel=error)

work=$(mktemp -d -t cmdop-interop-XXXXXX)
_stack_dirs+=("$work")
mkdir -p "$work/sub"
printf 'hello from interop\n' > "$work/hello.txt"
export CMDOP_TEST_DIR="$work"

start_stack
node tests/interop/node/interop.cjs
