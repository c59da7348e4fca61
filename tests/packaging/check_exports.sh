#!/usr/bin/env bash
# Checks the public face of a built or installed libcmdop.so: it exports
# cmdop_* functions and nothing else, and (on request) carries the expected
# soname.
#
#   tests/packaging/check_exports.sh path/to/libcmdop.so [expected-soname]
set -euo pipefail

lib=${1:?usage: $0 path/to/libcmdop.so [expected-soname]}
want_soname=${2:-}
[ -f "$lib" ] || { echo "check_exports: $lib does not exist" >&2; exit 1; }

exports=$(nm -D --defined-only "$lib" | awk '{ print $NF }' | sort -u)
count=$(printf '%s\n' "$exports" | grep -c '^cmdop_' || true)
stray=$(printf '%s\n' "$exports" | grep -v '^cmdop_' || true)
if [ -n "$stray" ]; then
  echo "check_exports: $lib exports symbols without the cmdop_ prefix:" >&2
  printf '  %s\n' $stray >&2
  echo "make them private (no #[no_mangle]) or add a version script limiting exports to cmdop_*" >&2
  exit 1
fi
if [ "$count" -eq 0 ]; then
  echo "check_exports: $lib exports no cmdop_ function at all" >&2
  exit 1
fi
for required in cmdop_version cmdop_local_new cmdop_execute cmdop_last_error_message; do
  printf '%s\n' "$exports" | grep -qx "$required" || {
    echo "check_exports: $lib does not export $required" >&2; exit 1; }
done

if [ -n "$want_soname" ]; then
  soname=$(readelf -d "$lib" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')
  if [ "$soname" != "$want_soname" ]; then
    echo "check_exports: $lib has soname '${soname:-<none>}', expected '$want_soname'" >&2
    exit 1
  fi
fi
echo "check_exports: $count cmdop_ symbols, nothing else${want_soname:+, soname $want_soname}"
