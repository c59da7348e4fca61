#!/usr/bin/env bash
# Runs every check and test suite: rustfmt and clippy (warnings fail), Rust
# unit and integration tests, the header
# freshness check, the C tests (ASan + UBSan) against a real control plane
# and agent, the official Node SDK interop test, packaging (install, pkg-config,
# CMake, exports; Debian packages), and the C++ and Go bindings.
set -euo pipefail
cd "$(dirname "$0")/.."
# Builds live in this checkout's target/ (the paths below assume it),
# whatever CARGO_TARGET_DIR the environment sets.
export CARGO_TARGET_DIR="$PWD/target"

step() { printf '\n==> %s\n' "$*"; }

# Every tool the suites below need, installed when possible; otherwise this
# stops here with the missing tool and its install command.
step "tools and packages (scripts/deps.sh)"
scripts/deps.sh
[ -x "$HOME/.cargo/bin/cargo" ] && export PATH="$HOME/.cargo/bin:$PATH"

step "cargo fmt --check"
cargo fmt --all --check || {
  echo "formatting differs: run 'cargo fmt --all' and commit the result" >&2; exit 1; }

step "build (debug)"
cargo build --workspace --locked

step "cargo clippy (warnings are errors)"
cargo clippy --workspace --all-targets --locked -- -D warnings

step "include/cmdop.h is up to date"
if git rev-parse --git-dir >/dev/null 2>&1; then
  git diff --exit-code -- include/cmdop.h || {
    echo "include/cmdop.h changed when building: commit the regenerated header" >&2; exit 1; }
fi

step "Rust tests"
cargo test --workspace --locked

for suite in tests/c/run.sh tests/interop/node/run.sh tests/interop/python/run.sh \
             tests/packaging/run.sh tests/packaging/deb.sh bindings/run_tests.sh; do
  step "$suite"
  "$suite"
done

printf '\nall test suites passed\n'
