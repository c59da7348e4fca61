# A fleet for the fan-out case: one control plane and N real agents on
# loopback, each labelled fleet=bench, plus the host lists the peers take
# (one hostname per line for `xargs … cmdop exec -H`, N copies of the ssh
# alias for parallel-ssh).
#
#   . bench/lib/fleet.sh
#   bench_fleet_start DIR N PREFIX      # agents PREFIX-01 … PREFIX-N
#
# sets fleet_SERVER (host:port), fleet_API_KEY, fleet_CP_PID, fleet_HOSTS
# (file: the agents' hostnames) and returns once every agent is online.

bench_fleet_start() {
  local dir=$1 n=$2 prefix=$3
  mkdir -p "$dir"
  local log_level=${CMDOP_BENCH_LOG:-warn}
  "$CMDOP_BIN" admin --data-dir "$dir" create-workspace bench >/dev/null
  local key
  key=$("$CMDOP_BIN" admin --data-dir "$dir" create-key --workspace bench --label bench)
  "$CMDOP_BIN" --log-level "$log_level" server --listen 127.0.0.1:0 --data-dir "$dir" \
    --ready-file "$dir/ready" >"$dir/server.log" 2>&1 &
  local cp_pid=$!
  bench_own_pid "$cp_pid"
  if ! bench_wait_file "$dir/ready" 300 "$cp_pid"; then
    echo "the fleet's control plane did not start; its log:" >&2
    cat "$dir/server.log" >&2
    return 1
  fi
  local addr i host token
  addr=$(head -n1 "$dir/ready")
  : >"$dir/hosts"
  for i in $(seq -w 1 "$n"); do
    host=$prefix-$i
    token=$("$CMDOP_BIN" admin --data-dir "$dir" enroll-token --workspace bench)
    CMDOP_ENROLL_TOKEN=$token "$CMDOP_BIN" --log-level "$log_level" agent --server "http://$addr" \
      --state-file "$dir/agent-$i.json" --hostname "$host" --label fleet=bench \
      >"$dir/agent-$i.log" 2>&1 &
    bench_own_pid "$!"
    echo "$host" >>"$dir/hosts"
  done
  local online=0
  for _ in $(seq 600); do
    online=$(CMDOP_SERVER=http://$addr CMDOP_API_KEY=$key "$CMDOP_BIN" machines --json \
      -l 'fleet=bench,cmdop.io/status=online' 2>/dev/null | grep -c '"native_exec":true' || true)
    [ "$online" -ge "$n" ] && break
    sleep 0.1
  done
  if [ "$online" -lt "$n" ]; then
    echo "only $online of $n fleet agents came online; the first agent's log:" >&2
    cat "$dir/agent-$(seq -w 1 "$n" | head -n1).log" >&2
    return 1
  fi
  fleet_SERVER=$addr
  fleet_API_KEY=$key
  fleet_CP_PID=$cp_pid
  fleet_HOSTS=$dir/hosts
  bench_log "fleet up: control plane http://$addr (pid $cp_pid), $n agents online"
}
