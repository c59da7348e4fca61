# Shared by bench/run and its helpers: logging, a registry of the processes
# and directories the harness owns, and cleanup on exit.
#
#   . bench/lib/common.sh
#   bench_own_pid PID     # terminated (TERM, then KILL) on exit
#   bench_own_dir DIR     # removed on exit
#   bench_cleanup         # runs automatically on EXIT/INT/TERM

_bench_pids=()
_bench_dirs=()
_bench_exit_hooks=()

bench_log() { printf '[bench %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
bench_warn() { printf '[bench %s] WARNING: %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

bench_own_pid() { _bench_pids+=("$1"); }
bench_own_dir() { _bench_dirs+=("$1"); }
# Registers a command (a string, eval'd) to run before processes are killed,
# e.g. closing an ssh ControlMaster politely.
bench_on_exit() { _bench_exit_hooks+=("$1"); }

bench_cleanup() {
  local hook pid d
  for hook in "${_bench_exit_hooks[@]}"; do eval "$hook" >/dev/null 2>&1 || true; done
  _bench_exit_hooks=()
  for pid in "${_bench_pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${_bench_pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  _bench_pids=()
  for d in "${_bench_dirs[@]}"; do rm -rf "$d"; done
  _bench_dirs=()
}
trap bench_cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints a free TCP port on 127.0.0.1 (racy by nature; good enough on loopback).
bench_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# Waits up to $2 tenths of a second for file $1 to exist; fails early if
# process $3 (optional) dies.
bench_wait_file() {
  local file=$1 tenths=$2 pid=${3:-}
  for _ in $(seq "$tenths"); do
    [ -s "$file" ] && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then return 1; fi
    sleep 0.1
  done
  [ -s "$file" ]
}

# Appends a record saying why a case did not run. $1 case, $2 subject,
# $3 label, $4 reason. JSON-escapes the texts with python3.
bench_skip() {
  python3 - "$1" "$2" "$3" "$4" >>"$BENCH_RESULTS" <<'EOF'
import json, sys
case, subject, label, reason = sys.argv[1:5]
print(json.dumps({"case": case, "subject": subject, "label": label, "skipped": reason}))
EOF
  bench_log "skipped $1/$2: $4"
}
