#!/usr/bin/env bash
# The official Python SDK's File* requests, sent by a small gRPC client
# built from OUR protos (the SDK itself is not used): after a terminal
# set_machine (GetSessionByHostname) on a connection, File* calls with an
# empty session_id go to that machine; with no selection, and on every
# failure, the answer is a gRPC error status (the SDK ignores
# `success=false`). Needs python3 with venv; grpcio and grpcio-tools are
# installed from PyPI into a venv under target/.
set -euo pipefail
cd "$(dirname "$0")/../../.."
export CARGO_TARGET_DIR="$PWD/target"
. tests/harness.sh

venv=target/interop-python-venv
if ! "$venv/bin/python" -c 'import grpc, grpc_tools' 2>/dev/null; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check 'grpcio>=1.60,<2' 'grpcio-tools>=1.60,<2'
fi
gen=target/interop-python-gen
rm -rf "$gen"; mkdir -p "$gen"
"$venv/bin/python" -m grpc_tools.protoc -I proto --python_out="$gen" --grpc_python_out="$gen" \
    proto/terminal.proto

work=$(mktemp -d -t cmdop-pyinterop-XXXXXX)
_stack_dirs+=("$work")
mkdir -p "$work/sub" "$work/home"
printf 'hello from interop\n' > "$work/hello.txt"
printf 'keep\n' > "$work/home/keep.txt"
export CMDOP_TEST_DIR="$work"
# The agent's home is a throw-away directory: the suite checks that an
# empty path or `~` deletes nothing, and must not risk a real home.
HOME="$work/home" start_stack
PYTHONPATH="$gen" "$venv/bin/python" tests/interop/python/files_session.py
