# Starts a control plane and one agent as separate processes on loopback, so
# that each one's memory can be measured on its own.
#
#   . bench/lib/stack.sh
#   bench_stack_start NAME DIR HOSTNAME [extra `cmdop server` flags…]
#   BENCH_STACK_CA=ca.pem bench_stack_start NAME DIR HOSTNAME --tls-cert C --tls-key K
#                     # a TLS stack: the agent dials https and trusts ca.pem
#   BENCH_STACK_DATABASE_URL_FILE=F bench_stack_start NAME DIR HOSTNAME
#                     # the control plane on the PostgreSQL database whose
#                     # URL is in F (see bench/rust/src/pg) instead of SQLite
#
# sets, for NAME=native say:
#   native_SERVER     host:port        native_HOST, native_PORT
#   native_API_KEY    cmdop_…          native_HOSTNAME
#   native_CP_PID     control plane    native_AGENT_PID  agent
#   native_CA         the CA file clients trust (TLS stacks; empty otherwise)
# The agent is enrolled when this returns; its terminal session may need a
# moment more, so clients retry selecting the machine for a few seconds.

CMDOP_BIN=${CMDOP_BIN:-target/release/cmdop}

bench_stack_start() {
  local name=$1 dir=$2 host=$3
  shift 3
  mkdir -p "$dir"
  local log_level=${CMDOP_BENCH_LOG:-warn}
  local store=(--data-dir "$dir")
  [ -z "${BENCH_STACK_DATABASE_URL_FILE:-}" ] || store=(--database-url-file "$BENCH_STACK_DATABASE_URL_FILE")
  "$CMDOP_BIN" admin "${store[@]}" create-workspace bench >/dev/null
  local key token
  key=$("$CMDOP_BIN" admin "${store[@]}" create-key --workspace bench --label bench)
  token=$("$CMDOP_BIN" admin "${store[@]}" enroll-token --workspace bench)

  "$CMDOP_BIN" --log-level "$log_level" server --listen 127.0.0.1:0 "${store[@]}" \
    --ready-file "$dir/ready" "$@" >"$dir/server.log" 2>&1 &
  local cp_pid=$!
  bench_own_pid "$cp_pid"
  if ! bench_wait_file "$dir/ready" 300 "$cp_pid"; then
    echo "control plane '$name' did not start; its log:" >&2
    cat "$dir/server.log" >&2
    return 1
  fi
  local addr
  addr=$(head -n1 "$dir/ready")

  local ca=${BENCH_STACK_CA:-} scheme=http agent_tls=()
  [ -z "$ca" ] || { scheme=https; agent_tls=(--ca-cert "$ca"); }
  "$CMDOP_BIN" --log-level "$log_level" agent --server "$scheme://$addr" --token "$token" \
    --state-file "$dir/agent.json" --hostname "$host" "${agent_tls[@]}" >"$dir/agent.log" 2>&1 &
  local agent_pid=$!
  bench_own_pid "$agent_pid"

  local enrolled=
  for _ in $(seq 200); do
    if "$CMDOP_BIN" admin "${store[@]}" machines --workspace bench 2>/dev/null | grep -q "	$host	"; then
      enrolled=1
      break
    fi
    kill -0 "$agent_pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$enrolled" ]; then
    echo "agent for '$name' did not enroll; agent log:" >&2
    cat "$dir/agent.log" >&2
    return 1
  fi

  printf -v "${name}_SERVER" '%s' "$addr"
  printf -v "${name}_HOST" '%s' "${addr%:*}"
  printf -v "${name}_PORT" '%s' "${addr##*:}"
  printf -v "${name}_API_KEY" '%s' "$key"
  printf -v "${name}_HOSTNAME" '%s' "$host"
  printf -v "${name}_CP_PID" '%s' "$cp_pid"
  printf -v "${name}_AGENT_PID" '%s' "$agent_pid"
  printf -v "${name}_CA" '%s' "$ca"
  bench_log "stack '$name' up: control plane $scheme://$addr (pid $cp_pid), agent '$host' (pid $agent_pid)"
}
