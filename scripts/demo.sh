#!/usr/bin/env bash
# The demo: builds everything, starts a control plane and an agent for this
# machine (`cmdop dev`), and runs the C quickstart against them.
set -euo pipefail
cd "$(dirname "$0")/.."
# Builds live in this checkout's target/ (the paths below assume it),
# whatever CARGO_TARGET_DIR the environment sets.
export CARGO_TARGET_DIR="$PWD/target"

cargo build --workspace --locked
# The library's soname is libcmdop.so.<ABI version> (see build.rs); cargo
# only writes libcmdop.so, so give the dynamic loader the name it will look for.
soname=$(objdump -p target/debug/libcmdop.so | awk '$1 == "SONAME" { print $2 }')
ln -sf libcmdop.so "target/debug/${soname:-libcmdop.so.1}"
cc -std=c99 -Wall -Wextra -O2 -Iinclude examples/quickstart.c \
   -Ltarget/debug -lcmdop -Wl,-rpath,"$PWD/target/debug" -o target/quickstart

. tests/harness.sh
CMDOP_TEST_HOSTNAME=$(hostname) start_stack
echo "control plane and agent up on $CMDOP_SERVER; running examples/quickstart.c"
target/quickstart "$CMDOP_TEST_HOSTNAME"
