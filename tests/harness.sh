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

# ---------------------------------------------------------------------------
# A control plane that can be stopped and restarted on the same port
# (`cmdop server`), with workspaces, keys and agents made through
# `cmdop admin`. Everything lives in one directory (data, pid files, logs),
# so other processes, e.g. a C test calling tests/c/stack_ctl.sh, can drive
# it too.
#
#   dir=$(mktemp -d); managed_server_start "$dir"       # DIR/addr = host:port
#   key=$(managed_workspace "$dir" w1)                  # workspace + API key
#   managed_agent_start "$dir" w1 alpha-one             # agent, env CMDOP_TEST_AGENT=alpha-one
#   managed_machine_id "$dir" w1 alpha-one              # prints mach_…
#   managed_server_stop "$dir"; managed_server_start "$dir"   # same port again
#   managed_cleanup "$dir"                              # stop everything, remove DIR

# Start (or restart, on the port recorded in DIR/addr) the control plane.
managed_server_start() {
  local dir=$1 listen=127.0.0.1:0
  [ -s "$dir/addr" ] && listen=$(cat "$dir/addr")
  rm -f "$dir/ready"
  "$CMDOP_BIN" --log-level "${CMDOP_TEST_LOG:-warn}" server --listen "$listen" \
      --data-dir "$dir/data" --ready-file "$dir/ready" >>"$dir/server.log" 2>&1 &
  echo "$!" >"$dir/server.pid"
  for _ in $(seq 300); do
    [ -s "$dir/ready" ] && { cp "$dir/ready" "$dir/addr"; return 0; }
    _managed_alive "$(cat "$dir/server.pid")" || break
    sleep 0.1
  done
  echo "cmdop server did not start (listen $listen):" >&2; cat "$dir/server.log" >&2
  return 1
}

# Stop the control plane of DIR (SIGTERM, then SIGKILL after 5 s).
managed_server_stop() {
  _managed_kill "$1/server.pid"
}

# `cmdop admin` on DIR's data directory.
managed_admin() {
  local dir=$1; shift
  "$CMDOP_BIN" --log-level warn admin --data-dir "$dir/data" "$@"
}

# Create workspace NAME and print a new API key for it.
managed_workspace() {
  managed_admin "$1" create-workspace "$2" >/dev/null
  managed_admin "$1" create-key --workspace "$2"
}

# Enroll and start an agent reporting HOSTNAME into WORKSPACE. The agent's
# environment carries CMDOP_TEST_AGENT=HOSTNAME, so a command can tell which
# agent ran it.
managed_agent_start() {
  local dir=$1 ws=$2 host=$3 token
  token=$(managed_admin "$dir" enroll-token --workspace "$ws")
  CMDOP_TEST_AGENT=$host CMDOP_ENROLL_TOKEN=$token "$CMDOP_BIN" --log-level "${CMDOP_TEST_LOG:-warn}" agent \
      --server "http://$(cat "$dir/addr")" \
      --state-file "$dir/agent-$host.state" --hostname "$host" >>"$dir/agent-$host.log" 2>&1 &
  echo "$!" >"$dir/agent-$host.pid"
}

# Print the machine id of HOSTNAME in WORKSPACE (waits up to 10 s for it).
managed_machine_id() {
  local dir=$1 ws=$2 host=$3 id
  for _ in $(seq 100); do
    id=$(managed_admin "$dir" machines --workspace "$ws" | awk -F'\t' -v h="$host" '$2 == h { print $1; exit }')
    [ -n "$id" ] && { echo "$id"; return 0; }
    sleep 0.1
  done
  echo "agent $host never enrolled into $ws:" >&2; cat "$dir/agent-$host.log" >&2
  return 1
}

# Stop every process of DIR and remove it.
managed_cleanup() {
  local pidfile
  for pidfile in "$1"/*.pid; do
    [ -e "$pidfile" ] && _managed_kill "$pidfile"
  done
  rm -rf "$1"
}

_managed_kill() {
  local pid
  [ -s "$1" ] || return 0
  pid=$(cat "$1")
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 50); do _managed_alive "$pid" || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  rm -f "$1"
}

# True while PID runs (a zombie, e.g. one whose parent script exited, does not).
_managed_alive() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [ "${stat%% *}" != Z ]
}
