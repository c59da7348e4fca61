#!/usr/bin/env bash
# Lets a C test drive a managed control plane (see tests/harness.sh):
#   tests/c/stack_ctl.sh server-stop DIR
#   tests/c/stack_ctl.sh server-start DIR     # again on the port in DIR/addr
# Run from the repository root.
set -euo pipefail
. tests/harness.sh
trap - EXIT
case "${1:-}" in
  server-stop) managed_server_stop "$2" ;;
  server-start) managed_server_start "$2" ;;
  *) echo "usage: $0 server-stop|server-start DIR" >&2; exit 2 ;;
esac
