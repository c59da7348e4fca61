#!/usr/bin/env bash
# The demo: builds everything, starts a control plane and an agent for this
# machine (`cmdop dev`), and runs the C quickstart against them.
set -euo pipefail
cd "$(dirname "$0")/.."
# Builds live in this checkout's target/ (the paths below assume it),
# whatever CARGO_TARGET_DIR the environment sets.
export CARGO_TARGET_DIR="$PWD/target"

cargo build --workspace --locked
# The build line exactly as examples/quickstart.c's comment gives it
# (build.rs leaves libcmdop.so.<ABI> beside libcmdop.so for the loader).
eval "$(sed -n 's/^ \*   \(cc .*examples\/quickstart\.c.*\)$/\1/p' examples/quickstart.c)"

. tests/harness.sh
CMDOP_TEST_HOSTNAME=$(hostname) start_stack
echo "control plane and agent up on $CMDOP_SERVER; running examples/quickstart.c"
target/quickstart "$CMDOP_TEST_HOSTNAME"
