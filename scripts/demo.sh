#!/usr/bin/env bash
# The demo: builds everything, starts a control plane and an agent for this
# machine (`cmdop dev`), and runs the C quickstart against them.
set -euo pipefail
cd "$(dirname "$0")/.."

cargo build --workspace --locked
cc -std=c99 -Wall -Wextra -O2 -Iinclude examples/quickstart.c \
   -Ltarget/debug -lcmdop -Wl,-rpath,"$PWD/target/debug" -o target/quickstart

. tests/harness.sh
CMDOP_TEST_HOSTNAME=$(hostname) start_stack
echo "control plane and agent up on $CMDOP_SERVER; running examples/quickstart.c"
target/quickstart "$CMDOP_TEST_HOSTNAME"
