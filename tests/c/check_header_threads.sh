#!/usr/bin/env bash
# Header contract: the comment above every function include/cmdop.h
# declares states its threads ("Thread: ..."). Prints offenders; exit 1 if any.
#   tests/c/check_header_threads.sh [HEADER]
set -uo pipefail
header=${1:-include/cmdop.h}
awk '
  /\/\*\*/ { doc = ""; in_doc = 1 }
  in_doc { doc = doc $0 "\n" }
  /\*\// { in_doc = 0; next }
  !in_doc && /^[a-z][a-z0-9_ ]*[ *]cmdop_[a-z0-9_]*\(/ {
    name = $0; sub(/\(.*/, "", name); sub(/.*[ *]/, "", name)
    n++
    if (doc !~ /Thread:/) { print "  " name; bad++ }
    doc = ""
  }
  END {
    if (n < 50) { print "check_header_threads: only " n " functions found: the scan is broken"; exit 1 }
    if (bad) { print "check_header_threads: " bad " of " n " functions say nothing about threads (above)"; exit 1 }
    print "check_header_threads: all " n " functions state their threads"
  }
' "$header"
