#!/usr/bin/env bash
# Runs e2e.c against `cmdop dev`, with extensions (native exec) and without
# (terminal fallback). Needs the `cmdop` binary (cargo build -p cmdop-cli).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -p cmdop -p cmdop-cli
target=${CARGO_TARGET_DIR:-target}/debug
out=$(mktemp -d -t cmdop-e2e-XXXXXX)
# The library carries a soname (libcmdop.so.N); point it at the fresh build.
soname=$(readelf -d "$target/libcmdop.so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
ln -s "$PWD/$target/libcmdop.so" "$out/${soname:-libcmdop.so}"
cc -std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -Iinclude tests/c_smoke/e2e.c \
   -L"$target" -lcmdop -Wl,-rpath,"$out" -pthread -o "$out/e2e"
. tests/harness.sh
for mode in native fallback; do
  echo "== $mode"
  if [ "$mode" = native ]; then start_stack; else start_stack --no-extensions; fi
  "$out/e2e"
  stop_stack
done
rm -rf "$out"
