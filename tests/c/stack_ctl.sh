#!/usr/bin/env bash
# Lets a C test drive a managed control plane (see tests/harness.sh):
#   tests/c/stack_ctl.sh server-stop DIR
#   tests/c/stack_ctl.sh server-kill DIR      # SIGKILL, no grace
#   tests/c/stack_ctl.sh server-start DIR     # again on the port in DIR/addr
#   tests/c/stack_ctl.sh agent-kill DIR       # SIGKILL every agent of DIR
# Run from the repository root.
set -euo pipefail
. tests/harness.sh
trap - EXIT
case "${1:-}" in
  server-stop) managed_server_stop "$2" ;;
  server-kill)
    pid=$(cat "$2/server.pid")
    kill -KILL "$pid" 2>/dev/null || true
    for _ in $(seq 100); do _managed_alive "$pid" || break; sleep 0.01; done
    rm -f "$2/server.pid" ;;
  server-start) managed_server_start "$2" ;;
  agent-kill)
    for f in "$2"/agent-*.pid; do
      [ -e "$f" ] || continue
      kill -KILL "$(cat "$f")" 2>/dev/null || true
      rm -f "$f"
    done ;;
  *) echo "usage: $0 server-stop|server-kill|server-start|agent-kill DIR" >&2; exit 2 ;;
esac
