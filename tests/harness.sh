# Shared by the shell-driven test suites: starts a throw-away control plane
# and agent (`cmdop dev`) on an ephemeral loopback port and stops them on exit.
#
#   . tests/harness.sh
#   start_stack [extra `cmdop dev` flags…]   # exports CMDOP_API_KEY, CMDOP_SERVER,
#                                            # CMDOP_HOST, CMDOP_PORT, CMDOP_TEST_HOSTNAME
#   stop_stack                               # also runs automatically on exit

CMDOP_BIN=${CMDOP_BIN:-target/debug/cmdop}
_stack_pids=()
_stack_dirs=()

stop_stack() {
  for pid in "${_stack_pids[@]}"; do
    kill -TERM "$pid" 2>/dev/null || true
  done
  for pid in "${_stack_pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
  done
  _stack_pids=()
  for d in "${_stack_dirs[@]}"; do rm -rf "$d"; done
  _stack_dirs=()
}
trap stop_stack EXIT

start_stack() {
  local dir
  dir=$(mktemp -d -t cmdop-stack-XXXXXX)
  _stack_dirs+=("$dir")
  export CMDOP_TEST_HOSTNAME=${CMDOP_TEST_HOSTNAME:-cmdop-test-$$}
  "$CMDOP_BIN" --log-level "${CMDOP_TEST_LOG:-warn}" dev --listen 127.0.0.1:0 \
      --env-file "$dir/env" --hostname "$CMDOP_TEST_HOSTNAME" "$@" >"$dir/dev.log" 2>&1 &
  _stack_pids+=("$!")
  for _ in $(seq 300); do
    [ -f "$dir/env" ] && break
    if ! kill -0 "$!" 2>/dev/null; then
      echo "cmdop dev exited early:" >&2; cat "$dir/dev.log" >&2; return 1
    fi
    sleep 0.1
  done
  [ -f "$dir/env" ] || { echo "cmdop dev did not become ready in 30 s:" >&2; cat "$dir/dev.log" >&2; return 1; }
  set -a; . "$dir/env"; set +a
  export CMDOP_HOST=${CMDOP_SERVER%:*} CMDOP_PORT=${CMDOP_SERVER##*:}
  export CMDOP_STACK_LOG="$dir/dev.log"
}
