#!/usr/bin/env bash
# The C test suite of libcmdop: header checks (C99, C++17, double include),
# then every tests/c/test_*.c built with ASan + UBSan and run against real
# control planes and agents:
#   native    `cmdop dev`                      (extensions on: native exec)
#   fallback  `cmdop dev --no-extensions`      (official terminal path)
#   multi     `cmdop server` + `cmdop agent`s  (two workspaces, similar hostnames)
#   fresh     one `cmdop server` + agent per test that stops/restarts it
#   pair      two `cmdop server`s on one data dir + an agent given both
# Ends with the line "N passed, M failed"; exits non-zero on any failure.
#
#   tests/c/run.sh [NAME…]     # e.g. tests/c/run.sh exec_native files
set -uo pipefail
cd "$(dirname "$0")/../.."
# Builds live in this checkout's target/ (the paths below assume it),
# whatever CARGO_TARGET_DIR the environment sets.
export CARGO_TARGET_DIR="$PWD/target"

cargo build -p cmdop -p cmdop-cli || { echo "0 passed, 1 failed"; exit 1; }

target=$PWD/target/debug
out=$(mktemp -d -t cmdop-ctests-XXXXXX)
. tests/harness.sh
managed_dirs=()
cleanup() {
  local i
  stop_stack
  # Last first: a directory inside an earlier one (the pair's B) must stop
  # its processes before the outer one is removed with its pid files.
  for (( i = ${#managed_dirs[@]} - 1; i >= 0; i-- )); do managed_cleanup "${managed_dirs[i]}"; done
  rm -rf "$out"
}
trap cleanup EXIT

# Sanitizers: any UBSan report aborts the test; ASan/LSan stop at the first
# error. The suppressions file documents the one leak report we silence.
export ASAN_OPTIONS="halt_on_error=1:abort_on_error=0:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1"
export LSAN_OPTIONS="suppressions=$PWD/tests/c/lsan.supp:print_suppressions=0"

cflags=(-std=c99 -D_POSIX_C_SOURCE=200809L -Wall -Wextra -Werror -g
        -fsanitize=address,undefined -fno-omit-frame-pointer -Iinclude -Itests/c)
# The library's soname is versioned (libcmdop.so.0) but cargo only writes
# libcmdop.so: give the loader that name through a private symlink.
mkdir -p "$out/lib"
soname=$(objdump -p "$target/libcmdop.so" 2>/dev/null | awk '$1 == "SONAME" { print $2 }')
[ -n "$soname" ] && [ "$soname" != libcmdop.so ] && ln -sf "$target/libcmdop.so" "$out/lib/$soname"
ldflags=(-L"$target" -lcmdop -Wl,-rpath,"$out/lib" -Wl,-rpath,"$target" -pthread)

passed=0
failed=0
failed_names=()
record() { # NAME STATUS
  if [ "$2" -eq 0 ]; then
    passed=$((passed + 1)); printf 'PASS  %s\n' "$1"
  else
    failed=$((failed + 1)); failed_names+=("$1"); printf 'FAIL  %s (exit %s)\n' "$1" "$2"
  fi
}
check_cmd() { # NAME CMD…
  local name=$1; shift
  "$@"; record "$name" $?
}
wanted() { # NAME: selected by the command line (all when empty)
  [ "${#selected[@]}" -eq 0 ] && return 0
  local s; for s in "${selected[@]}"; do [ "$s" = "$1" ] && return 0; done; return 1
}
selected=("$@")

# ---------------------------------------------------------------- header
if wanted header; then
  echo '#include "cmdop.h"' >"$out/h.c"
  printf '#include "cmdop.h"\n#include "cmdop.h"\nint main(void) { return CMDOP_STATUS_OK; }\n' >"$out/twice.c"
  check_cmd header-c99 cc -std=c99 -pedantic -Wall -Wextra -Werror -Iinclude -fsyntax-only "$out/h.c"
  check_cmd header-c++17 g++ -std=c++17 -fsyntax-only -Wall -Wextra -Werror -Iinclude -x c++ "$out/h.c"
  check_cmd header-names tests/c/check_header_names.sh include/cmdop.h
  check_cmd header-threads tests/c/check_header_threads.sh include/cmdop.h
  check_cmd header-double-include cc -std=c99 -Wall -Wextra -Werror -Iinclude -c "$out/twice.c" -o "$out/twice.o"
  # MSVC's headers define stdin, stdout, stderr and errno as macros; a
  # parameter of one of those names would not compile there.
  printf '%s\n' '#define stdin (msvc_iob(0))' '#define stdout (msvc_iob(1))' \
    '#define stderr (msvc_iob(2))' '#define errno (*msvc_errno())' '#include "cmdop.h"' >"$out/msvc.c"
  check_cmd header-msvc-macros cc -std=c99 -pedantic -Wall -Wextra -Werror -Iinclude -fsyntax-only "$out/msvc.c"
fi

# ---------------------------------------------------------------- build tests
tests=()
for src in tests/c/test_*.c; do
  name=$(basename "$src" .c); name=${name#test_}
  wanted "$name" || continue
  if cc "${cflags[@]}" "$src" "${ldflags[@]}" -o "$out/$name"; then
    tests+=("$name")
  else
    record "$name (compile)" 1
  fi
done

# Runs test NAME with extra VAR=value environment, at most 150 s.
run_test() {
  local name=$1; shift
  printf -- '---- %s\n' "$name"
  env CMDOP_TEST_NAME="$name" CMDOP_TEST_CTL="$PWD/tests/c/stack_ctl.sh" "$@" \
      timeout -k 5 150 "$out/${name%%@*}"
  record "$name" $?
}
has_test() { local t; for t in "${tests[@]}"; do [ "$t" = "$1" ] && return 0; done; return 1; }

# ---------------------------------------------------------------- stacks
stack_env() { # the stack just started, as VAR=value words for run_test
  echo "CMDOP_HOST=$CMDOP_HOST CMDOP_PORT=$CMDOP_PORT CMDOP_SERVER=$CMDOP_SERVER" \
       "CMDOP_API_KEY=$CMDOP_API_KEY CMDOP_TEST_HOSTNAME=$CMDOP_TEST_HOSTNAME"
}

# A `cmdop server` with workspace w1 (agents alpha-one, alpha-two,
# bravo-host) and w2 (agent charlie-host). Sets $multi_env.
start_multi() {
  local dir k1 k2 h
  dir=$(mktemp -d -t cmdop-multi-XXXXXX); managed_dirs+=("$dir")
  managed_server_start "$dir" || return 1
  k1=$(managed_workspace "$dir" w1) && k2=$(managed_workspace "$dir" w2) || return 1
  for h in alpha-one alpha-two bravo-host; do managed_agent_start "$dir" w1 "$h"; done
  managed_agent_start "$dir" w2 charlie-host
  # A w1 key scoped to `exec` on machines labelled team=alpha (alpha-one).
  local ks
  managed_machine_id "$dir" w1 alpha-one >/dev/null || return 1
  managed_admin "$dir" label alpha-one team=alpha >/dev/null || return 1
  ks=$(managed_admin "$dir" create-key --workspace w1 --name c-exec-only --allow exec \
         --machines team=alpha) || return 1
  local addr; addr=$(cat "$dir/addr")
  multi_env="CMDOP_SERVER=$addr CMDOP_HOST=${addr%:*} CMDOP_PORT=${addr##*:} CMDOP_API_KEY=$k1
    CMDOP_TEST_KEY_W2=$k2 CMDOP_TEST_KEY_SCOPED=$ks CMDOP_TEST_HOSTNAME=alpha-one
    CMDOP_TEST_ID_ALPHA_TWO=$(managed_machine_id "$dir" w1 alpha-two)
    CMDOP_TEST_ID_BRAVO=$(managed_machine_id "$dir" w1 bravo-host)
    CMDOP_TEST_ID_CHARLIE=$(managed_machine_id "$dir" w2 charlie-host)
    CMDOP_TEST_MULTI_DIR=$dir"
}

# A `cmdop server` with one workspace and agent "solo", for a test that
# stops and restarts the server (tests/c/stack_ctl.sh). Sets $fresh_env.
start_fresh() {
  local dir key addr
  dir=$(mktemp -d -t cmdop-fresh-XXXXXX); managed_dirs+=("$dir")
  managed_server_start "$dir" || return 1
  key=$(managed_workspace "$dir" w1) || return 1
  managed_agent_start "$dir" w1 solo
  managed_machine_id "$dir" w1 solo >/dev/null || return 1
  addr=$(cat "$dir/addr")
  fresh_env="CMDOP_SERVER=$addr CMDOP_HOST=${addr%:*} CMDOP_PORT=${addr##*:} CMDOP_API_KEY=$key
    CMDOP_TEST_HOSTNAME=solo CMDOP_TEST_SERVER_DIR=$dir"
}

# Two `cmdop server`s sharing one data directory (A in DIR, B in DIR/b,
# whose data is a link to DIR/data) and agent "pair" started with
# --server A,B --servers-in-order (on A), for a test that kills A
# (tests/c/stack_ctl.sh server-kill DIR). Sets $pair_env.
start_pair() {
  local dir key a b token
  dir=$(mktemp -d -t cmdop-pair-XXXXXX); managed_dirs+=("$dir")
  managed_server_start "$dir" || return 1
  mkdir -p "$dir/b" && ln -s "$dir/data" "$dir/b/data"
  managed_dirs+=("$dir/b")
  managed_server_start "$dir/b" || return 1
  key=$(managed_workspace "$dir" w1) || return 1
  a=$(cat "$dir/addr"); b=$(cat "$dir/b/addr")
  token=$(managed_admin "$dir" enroll-token --workspace w1)
  CMDOP_ENROLL_TOKEN=$token "$CMDOP_BIN" --log-level "${CMDOP_TEST_LOG:-warn}" agent --server "http://$a,http://$b" --servers-in-order \
      --state-file "$dir/agent-pair.state" --hostname pair >>"$dir/agent-pair.log" 2>&1 &
  echo "$!" >"$dir/agent-pair.pid"
  managed_machine_id "$dir" w1 pair >/dev/null || return 1
  pair_env="CMDOP_SERVER=$a,$b CMDOP_HOST=${a%:*} CMDOP_PORT=${a##*:} CMDOP_API_KEY=$key
    CMDOP_TEST_HOSTNAME=pair CMDOP_TEST_SERVER_DIR=$dir CMDOP_TEST_SERVER_A=$a CMDOP_TEST_SERVER_B=$b"
}

native_tests=(client_new options_v1 close_in_flight lifecycle exec_native exec_one exec_stream cancel_slow files exec_options_files sessions debug_log introspection bad_input)
need_native=0
for t in "${native_tests[@]}"; do has_test "$t" && need_native=1; done
wanted quickstart && need_native=1
if [ "$need_native" = 1 ]; then
  if start_stack; then
    native_env=$(stack_env)
    for t in "${native_tests[@]}"; do
      has_test "$t" || continue
      # shellcheck disable=SC2086 # word splitting of VAR=value pairs is intended
      if [ "$t" = introspection ]; then run_test "$t" $native_env CMDOP_TEST_EXPECT_NATIVE=1
      else run_test "$t" $native_env; fi
    done
    if wanted quickstart; then
      # examples/quickstart.c built and run exactly as its comment says
      # (from the repository root, against the build tree).
      printf -- '---- quickstart (as its comment says)\n'
      build=$(sed -n 's/^ \*   \(cc .*examples\/quickstart\.c.*\)$/\1/p' examples/quickstart.c)
      run=$(sed -n 's/^ \*   CMDOP_SERVER=.* \(target\/quickstart\) .*$/\1/p' examples/quickstart.c)
      if [ -z "$build" ] || [ "$run" != target/quickstart ]; then
        echo "examples/quickstart.c no longer says how to build and run it"; record quickstart 1
      elif (eval "$build") && timeout 120 env CMDOP_SERVER="$CMDOP_SERVER" CMDOP_API_KEY="$CMDOP_API_KEY" \
             target/quickstart "$CMDOP_TEST_HOSTNAME" >"$out/quickstart.log" 2>&1; then
        record quickstart 0
      else
        cat "$out/quickstart.log" 2>/dev/null; record quickstart 1
      fi
    fi
    stop_stack
  else
    record "native stack (cmdop dev)" 1
  fi
fi

if has_test exec_fallback || has_test introspection || has_test close_in_flight; then
  if start_stack --no-extensions; then
    fallback_env=$(stack_env)
    # shellcheck disable=SC2086
    has_test exec_fallback && run_test exec_fallback $fallback_env
    # shellcheck disable=SC2086
    has_test introspection && run_test introspection@fallback $fallback_env CMDOP_TEST_EXPECT_NATIVE=0
    # shellcheck disable=SC2086
    has_test close_in_flight && run_test close_in_flight@fallback $fallback_env
    stop_stack
  else
    record "fallback stack (cmdop dev --no-extensions)" 1
  fi
fi

if has_test machine || has_test fleet_exec || has_test workspaces || has_test auth; then
  if start_multi; then
    # shellcheck disable=SC2086
    has_test machine && run_test machine $multi_env
    # shellcheck disable=SC2086
    has_test fleet_exec && run_test fleet_exec $multi_env
    # shellcheck disable=SC2086
    has_test workspaces && run_test workspaces $multi_env
    has_test scoped_key && run_test scoped_key $multi_env
    if has_test auth; then
      addr=$(echo "$multi_env" | sed -n 's/.*CMDOP_SERVER=\([^ ]*\).*/\1/p' | head -1)
      key=$(echo "$multi_env" | sed -n 's/.*CMDOP_API_KEY=\([^ ]*\).*/\1/p' | head -1)
      if command -v node >/dev/null && [ -d tests/interop/node/node_modules/@grpc/grpc-js ] ||
         (cd tests/interop/node && npm install --no-audit --no-fund --loglevel=error >/dev/null); then
        pair1=$(node tests/c/issue_tokens.cjs "$addr" "$key" 2) && pair2=$(node tests/c/issue_tokens.cjs "$addr" "$key" 1)
        # shellcheck disable=SC2086
        run_test auth $multi_env CMDOP_TEST_ACCESS="${pair1% *}" CMDOP_TEST_REFRESH="${pair1#* }" \
            CMDOP_TEST_ACCESS2="${pair2% *}" CMDOP_TEST_REFRESH2="${pair2#* }"
      else
        record "auth (needs node and tests/interop/node/node_modules to mint tokens)" 1
      fi
    fi
  else
    record "multi-workspace stack (cmdop server + agents)" 1
  fi
fi

for t in events reconnect server_restart outcome_unknown; do
  has_test "$t" || continue
  if start_fresh; then
    # shellcheck disable=SC2086
    run_test "$t" $fresh_env
  else
    record "$t stack (cmdop server + agent)" 1
  fi
done

if has_test failover; then
  if start_pair; then
    # shellcheck disable=SC2086
    run_test failover $pair_env
  else
    record "failover stack (two cmdop servers + agent)" 1
  fi
fi

echo
[ "$failed" -gt 0 ] && printf 'failed: %s\n' "${failed_names[*]}"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
