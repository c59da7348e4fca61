#!/usr/bin/env bash
# Builds and runs the C++ (GoogleTest) and Go (go test -race) binding tests,
# checks what can be checked of Swift without a toolchain,
# against a libcmdop installed into a temporary prefix with `make install`,
# and a fresh control plane + agent (`cmdop dev`, tests/harness.sh).
# Prints `N passed, M failed` over the individual tests; exits non-zero when
# anything failed.
set -uo pipefail
cd "$(dirname "$0")/.."
# Builds live in this checkout's target/ (the paths below assume it),
# whatever CARGO_TARGET_DIR the environment sets.
export CARGO_TARGET_DIR="$PWD/target"

work=$(mktemp -d -t cmdop-bindings-XXXXXX)
. tests/harness.sh
cleanup() { stop_stack; rm -rf "$work"; }
trap cleanup EXIT

passed=0
failed=0
fail_step() { failed=$((failed + 1)); echo "FAIL - $1"; }

echo "== building cmdop-cli (the stack) and installing libcmdop into a temporary prefix"
prefix=$work/prefix
if ! cargo build -p cmdop-cli --locked || ! make -s install PREFIX="$prefix"; then
  echo "0 passed, 1 failed"; exit 1
fi
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
# The Go test binary finds libcmdop.so.1 through the rpath (CMake sets its
# own). Naming the prefix in CGO_LDFLAGS also keys Go's build cache to this
# install: the cache does not notice a changed pkg-config answer alone.
export CGO_LDFLAGS="-L$prefix/lib -Wl,-rpath,$prefix/lib${CGO_LDFLAGS:+ $CGO_LDFLAGS}"

echo "== starting cmdop dev"
start_stack || { echo "0 passed, 1 failed"; exit 1; }

echo "== C++ (bindings/cpp, GoogleTest)"
if cmake -S bindings/cpp -B "$work/cpp" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_BUILD_TYPE=Debug >"$work/cpp.log" 2>&1 &&
   cmake --build "$work/cpp" -j 2 >>"$work/cpp.log" 2>&1; then
  timeout 300 "$work/cpp/cmdop_cpp_tests" --gtest_brief=1 >"$work/gtest.log" 2>&1
  cat "$work/gtest.log"
  p=$(sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' "$work/gtest.log" | tail -n1)
  f=$(sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' "$work/gtest.log" | tail -n1)
  if [ -z "$p" ] && [ -z "$f" ]; then
    fail_step "cmdop_cpp_tests did not finish"
  else
    passed=$((passed + ${p:-0})); failed=$((failed + ${f:-0}))
  fi
else
  cat "$work/cpp.log"; fail_step "building the C++ tests"
fi

# No Swift toolchain can be installed on these machines. What can be checked
# without one is checked: the CCmdop module map imports as a Clang module over
# the installed header (the step Swift's importer performs), and every C name
# the Swift sources use is declared in that header.
echo "== Swift (bindings/swift): CCmdop module import and the C names it uses"
cat >"$work/swift_module.m" <<'OBJC'
@import CCmdop;
static void on_disconnect(void *ud, const char *reason, bool will_reconnect) {
  (void)ud; (void)reason; (void)will_reconnect;
}
int main(void) {
  cmdop_client *c = 0;
  cmdop_disconnect_fn f = on_disconnect;
  (void)f;
  cmdop_options o;
  if (cmdop_options_init(&o, CMDOP_OPTIONS_VERSION) != CMDOP_STATUS_OK) return 1;
  return cmdop_local_new("127.0.0.1", 1, 0, &o, &c) == CMDOP_STATUS_OK ? 0 : 1;
}
OBJC
if clang -x objective-c -fmodules -fmodules-cache-path="$work/modules" -fsyntax-only -Wall -Werror \
     -fmodule-map-file=bindings/swift/Sources/CCmdop/module.modulemap -I"$prefix/include" \
     "$work/swift_module.m"; then
  passed=$((passed + 1)); echo "PASS - CCmdop imports as a module"
else
  fail_step "CCmdop does not import as a Clang module"
fi
missing=$(grep -ohE '\bcmdop_[a-z0-9_]+|\bCMDOP_[A-Z0-9_]+' bindings/swift/Sources/Cmdop/*.swift | sort -u |
          while read -r name; do grep -qw "$name" "$prefix/include/cmdop.h" || echo "$name"; done)
if [ -z "$missing" ]; then
  passed=$((passed + 1)); echo "PASS - every C name in the Swift sources is in cmdop.h"
else
  fail_step "C names used by the Swift sources but missing from cmdop.h: $missing"
fi

echo "== Go (bindings/go): gofmt -l and go vet"
unformatted=$(gofmt -l bindings/go)
if [ -z "$unformatted" ]; then
  passed=$((passed + 1)); echo "PASS - gofmt -l finds nothing"
else
  fail_step "not gofmt-formatted (run: gofmt -w bindings/go): $unformatted"
fi
if (cd bindings/go && go vet ./...) >"$work/govet.log" 2>&1; then
  passed=$((passed + 1)); echo "PASS - go vet"
else
  cat "$work/govet.log"; fail_step "go vet"
fi

echo "== Go (bindings/go, go test -race)"
(cd bindings/go && timeout 300 go test -race -count=1 -v ./...) >"$work/go.log" 2>&1
go_rc=$?
grep -E '^(--- |FAIL|ok|panic)|_test\.go:|DATA RACE' "$work/go.log"
p=$(grep -c '^--- PASS' "$work/go.log")
f=$(grep -c '^--- FAIL' "$work/go.log")
passed=$((passed + p)); failed=$((failed + f))
if [ "$go_rc" -ne 0 ] && [ "$f" -eq 0 ]; then
  tail -n 30 "$work/go.log"; fail_step "go test exited with $go_rc"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
