#!/usr/bin/env bash
# Header hygiene: every macro, type, enum constant and function that
# include/cmdop.h declares starts with cmdop_ or CMDOP_. Macros come from the
# preprocessor itself (cc -E -dM, minus what the system headers define);
# declarations from the comment-free header. Prints offenders; exit 1 if any.
#   tests/c/check_header_names.sh [HEADER]
set -uo pipefail
header=${1:-include/cmdop.h}
tmp=$(mktemp -d -t cmdop-names-XXXXXX)
trap 'rm -rf "$tmp"' EXIT
printf '#include <stdbool.h>\n#include <stddef.h>\n#include <stdint.h>\n' >"$tmp/base.c"
printf '#include <stdbool.h>\n#include <stddef.h>\n#include <stdint.h>\n#include "%s"\n' "$PWD/$header" >"$tmp/all.c"
cc -E -dM "$tmp/base.c" | awk '{ sub(/\(.*/, "", $2); print $2 }' | sort -u >"$tmp/base"
cc -E -dM "$tmp/all.c" | awk '{ sub(/\(.*/, "", $2); print $2 }' | sort -u >"$tmp/all"
comm -13 "$tmp/base" "$tmp/all" >"$tmp/macros"

# Declarations: strip comments and directives, then pick declared names.
cc -fpreprocessed -dD -E -P -x c "$header" 2>/dev/null | grep -v '^[[:space:]]*#' |
  grep -v 'extern "C"' >"$tmp/decl"
{
  grep -oE '\b(struct|enum)[[:space:]]+[A-Za-z_][A-Za-z0-9_]*' "$tmp/decl" | awk '{ print $2 }'
  grep -oE '}[[:space:]]*[A-Za-z_][A-Za-z0-9_]*[[:space:]]*;' "$tmp/decl" | sed -E 's/[};[:space:]]//g'
  grep -oE '\(\*[[:space:]]*[A-Za-z_][A-Za-z0-9_]*\)' "$tmp/decl" | sed -E 's/[()*[:space:]]//g'
  grep -oE '[A-Za-z_][A-Za-z0-9_]*[[:space:]]*\([^*]' "$tmp/decl" | sed -E 's/[[:space:]]*\(.$//'
  grep -oE '^[[:space:]]*[A-Za-z_][A-Za-z0-9_]*[[:space:]]*=' "$tmp/decl" | sed -E 's/[=[:space:]]//g'
  grep -oE 'typedef[[:space:]]+struct[[:space:]]+[A-Za-z_][A-Za-z0-9_]*[[:space:]]+[A-Za-z_][A-Za-z0-9_]*;' "$tmp/decl" |
    awk '{ sub(/;/, "", $4); print $4 }'
} | sort -u >"$tmp/names"

n_macros=$(wc -l <"$tmp/macros"); n_names=$(wc -l <"$tmp/names")
bad=$(cat "$tmp/macros" "$tmp/names" | grep -vE '^(cmdop_|CMDOP_)' | sort -u)
# A scan that finds (almost) nothing proves nothing.
if [ "$n_macros" -lt 3 ] || [ "$n_names" -lt 50 ]; then
  echo "check_header_names: only $n_macros macros and $n_names names found in $header: the scan is broken"
  exit 1
fi
if [ -n "$bad" ]; then
  echo "check_header_names: names in $header without the cmdop_/CMDOP_ prefix:"
  echo "$bad" | sed 's/^/  /'
  exit 1
fi
echo "check_header_names: $n_macros macros and $n_names declared names, all prefixed"
