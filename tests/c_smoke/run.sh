#!/usr/bin/env bash
# Builds libcmdop, checks that include/cmdop.h compiles as strict C99 and as
# C++, then builds and runs smoke.c against libcmdop.so (no server needed).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build -p cmdop
target=${CARGO_TARGET_DIR:-target}/debug
out=$(mktemp -d -t cmdop-smoke-XXXXXX)
# The library carries a soname (libcmdop.so.N); point it at the fresh build.
soname=$(readelf -d "$target/libcmdop.so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
ln -s "$PWD/$target/libcmdop.so" "$out/${soname:-libcmdop.so}"
trap 'rm -rf "$out"' EXIT
flags=(-Wall -Wextra -Werror -Iinclude)
echo '#include "cmdop.h"' | cc -std=c99 -pedantic "${flags[@]}" -fsyntax-only -x c -
echo '#include "cmdop.h"' | g++ -std=c++11 "${flags[@]}" -fsyntax-only -x c++ -
cc -std=c99 -D_POSIX_C_SOURCE=200809L "${flags[@]}" tests/c_smoke/smoke.c \
   -L"$target" -lcmdop -Wl,-rpath,"$out" -o "$out/smoke"
"$out/smoke"
