#!/usr/bin/env bash
# Runs the official Node SDK (@cmdop/node, unchanged) against our control
# plane and agent, then through another replica of a three-replica cluster.
# Needs `npm ci`/`npm install` done in this folder (the test script does it)
# and target/debug/cmdop built.
set -euo pipefail
cd "$(dirname "$0")/../../.."
# Builds live in this checkout's target/ (the paths below assume it),
# whatever CARGO_TARGET_DIR the environment sets.
export CARGO_TARGET_DIR="$PWD/target"
. tests/harness.sh

[ -d tests/interop/node/node_modules/@cmdop/node ] || (cd tests/interop/node && npm install --no-audit --no-fund --loglevel=error)

work=$(mktemp -d -t cmdop-interop-XXXXXX)
_stack_dirs+=("$work")
mkdir -p "$work/sub"
printf 'hello from interop\n' > "$work/hello.txt"
export CMDOP_TEST_DIR="$work"

start_stack
node tests/interop/node/interop.cjs

# Again against a cluster (`cmdop dev --cluster 3`: a private PostgreSQL,
# three replicas, the agent on the first): the SDK talks to the second
# replica, so every call it makes is forwarded to the agent's replica.
stop_stack # (removes the test dir too: make it again)
mkdir -p "$work/sub"
printf 'hello from interop\n' > "$work/hello.txt"
_stack_dirs+=("$work")
start_stack --cluster 3
IFS=, read -r agent_replica sdk_replica _ <<<"$CMDOP_SERVER"
echo "== the same suite through replica $sdk_replica (the agent is on $agent_replica)"
CMDOP_SERVER=$sdk_replica node tests/interop/node/interop.cjs
