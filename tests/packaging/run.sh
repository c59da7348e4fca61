#!/usr/bin/env bash
# Installs libcmdop into a temporary prefix the way a user would
# (`make install PREFIX=…`, and once more staged with DESTDIR), checks the
# installed tree (files, symlinks, soname, exported symbols), builds a C
# program through pkg-config and a CMake project through find_package(cmdop),
# and runs them against a real control plane + agent (`cmdop dev`).
# Prints `N passed, M failed`; exits non-zero when anything failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
# Builds live in this checkout's target/ (the paths below assume it),
# whatever CARGO_TARGET_DIR the environment sets.
export CARGO_TARGET_DIR="$PWD/target"

work=$(mktemp -d -t cmdop-packaging-XXXXXX)
. tests/harness.sh
cleanup() { stop_stack; rm -rf "$work"; }
trap cleanup EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   - $1"; }
not_ok() { failed=$((failed + 1)); echo "FAIL - $1"; [ -f "$work/log" ] && sed 's/^/       /' "$work/log"; }
# check NAME COMMAND...: runs COMMAND with its output in $work/log.
check() {
  local name=$1; shift
  if "$@" >"$work/log" 2>&1; then ok "$name"; else not_ok "$name"; fi
  rm -f "$work/log"
}

echo "== building (cmdop-cli for the stack; release libcmdop through make install)"
cargo build -p cmdop-cli --locked || { echo "0 passed, 1 failed"; exit 1; }

prefix=$work/prefix
check "make install PREFIX=<tmp>" make -s install PREFIX="$prefix"
libdir=$prefix/lib
version=$(pkg-config --modversion "$libdir/pkgconfig/cmdop.pc" 2>/dev/null || echo unknown)
major=${version%%.*}

installed_layout() {
  local f
  for f in "lib/libcmdop.so.$version" lib/libcmdop.a include/cmdop.h lib/pkgconfig/cmdop.pc \
           lib/cmake/cmdop/cmdopConfig.cmake lib/cmake/cmdop/cmdopConfigVersion.cmake; do
    [ -f "$prefix/$f" ] || { echo "missing $f"; return 1; }
  done
  [ "$(readlink "$libdir/libcmdop.so.$major")" = "libcmdop.so.$version" ] || { echo "bad libcmdop.so.$major link"; return 1; }
  [ "$(readlink "$libdir/libcmdop.so")" = "libcmdop.so.$major" ] || { echo "bad libcmdop.so link"; return 1; }
}
check "installed layout (library $version, symlinks, header, pc, cmake)" installed_layout

# The cmdop command, its manual pages and completions, as `make install`
# put them: the installed binary runs, `man -l` renders its page, and bash
# completes `cmdop ex<TAB>` to `exec`.
installed_cli() {
  local f
  for f in bin/cmdop share/man/man1/cmdop.1 share/man/man1/cmdop-exec.1 \
           share/bash-completion/completions/cmdop share/zsh/site-functions/_cmdop \
           share/fish/vendor_completions.d/cmdop.fish; do
    [ -f "$prefix/$f" ] || { echo "missing $f"; return 1; }
  done
  local out
  out=$("$prefix/bin/cmdop" --version) || return 1
  echo "$out"
  [ "$out" = "cmdop $version" ]
}
check "installed cmdop --version runs; man pages and completions in place" installed_cli
man_renders() {
  command -v man >/dev/null || { echo "man is missing: scripts/deps.sh installs it (man-db)"; return 1; }
  local page
  page=$(MANWIDTH=100 man -l "$prefix/share/man/man1/cmdop-exec.1" 2>&1) || { echo "$page"; return 1; }
  sed -n 1,12p <<<"$page"
  grep -q 'cmdop-exec' <<<"$page" && grep -q -- '--timeout' <<<"$page" && grep -q 'Exit status' <<<"$page"
}
check "man -l renders the installed cmdop-exec(1) page" man_renders
bash_completes_exec() {
  # A non-interactive bash drives the completion function the way readline
  # would for `cmdop ex<TAB>`.
  bash --norc --noprofile -c '
    source "$1" || exit 1
    fn=$(complete -p cmdop | sed -n "s/.*-F \([^ ]*\).*/\1/p")
    [ -n "$fn" ] || { echo "the script registers no completion function for cmdop"; exit 1; }
    COMP_WORDS=(cmdop ex); COMP_CWORD=1; COMP_LINE="cmdop ex"; COMP_POINT=${#COMP_LINE}
    "$fn" cmdop ex cmdop 2>/dev/null
    echo "COMPREPLY: ${COMPREPLY[*]}"
    [ "${COMPREPLY[*]}" = exec ]
  ' _ "$prefix/share/bash-completion/completions/cmdop"
}
check "bash completion completes cmdop ex<TAB> to exec" bash_completes_exec
check "exports only cmdop_ symbols, soname libcmdop.so.$major" \
  tests/packaging/check_exports.sh "$libdir/libcmdop.so.$version" "libcmdop.so.$major"

# Versions follow one policy (packaging/README.md): package major =
# CMDOP_ABI_VERSION of the installed header = soname major.
versions_agree() {
  local abi
  abi=$(printf '#include "cmdop.h"\nCMDOP_ABI_VERSION\n' | cc -E -P -I"$prefix/include" - | tail -n1 | tr -d '[:space:]')
  echo "package $version, CMDOP_ABI_VERSION $abi, major $major"
  [ -n "$abi" ] && [ "$abi" = "$major" ]
}
check "package major = CMDOP_ABI_VERSION = soname major" versions_agree

# The installed library is stripped; its debug info sits in .debug/ and
# the library names it (.gnu_debuglink) so debuggers find it.
stripped_with_debug_file() {
  local so="$libdir/libcmdop.so.$version" dbg="$libdir/.debug/libcmdop.so.$version.debug"
  [ -f "$dbg" ] || { echo "missing $dbg"; return 1; }
  if readelf -S "$so" | grep -qE '\.debug_(info|line)'; then echo "$so still has debug sections"; return 1; fi
  readelf -S "$dbg" | grep -q '\.debug_info' || { echo "$dbg has no .debug_info"; return 1; }
  readelf --string-dump=.gnu_debuglink "$so" | grep -q "libcmdop.so.$version.debug" ||
    { echo "$so has no .gnu_debuglink to its debug file"; return 1; }
  if readelf -S "$libdir/libcmdop.a" | grep -qE '\.debug_info'; then echo "libcmdop.a still has debug info"; return 1; fi
  echo "libcmdop.so.$version: $(stat -c %s "$so") bytes; debug file: $(stat -c %s "$dbg") bytes"
}
check "installed library stripped, debug info in .debug/ via .gnu_debuglink" stripped_with_debug_file

staged() {
  local stage=$work/stage
  make -s install PREFIX=/opt/cmdop DESTDIR="$stage" NO_BUILD=1 &&
    [ -f "$stage/opt/cmdop/lib/libcmdop.so.$version" ] &&
    [ -x "$stage/opt/cmdop/bin/cmdop" ] &&
    grep -qx 'prefix=/opt/cmdop' "$stage/opt/cmdop/lib/pkgconfig/cmdop.pc" &&
    make -s uninstall PREFIX=/opt/cmdop DESTDIR="$stage" &&
    [ -z "$(find "$stage" -type f -o -type l)" ]
}
check "DESTDIR staging install and uninstall" staged

export PKG_CONFIG_PATH=$libdir/pkgconfig
build_pkgconfig() {
  # shellcheck disable=SC2046 # word splitting of pkg-config output is intended
  cc -std=c99 -Wall -Wextra -Werror tests/packaging/app.c $(pkg-config --cflags --libs cmdop) \
     -Wl,-rpath,"$(pkg-config --variable=libdir cmdop)" -o "$work/app_pkgconfig"
}
check "C program builds with pkg-config --cflags --libs cmdop" build_pkgconfig
build_pkgconfig_static() {
  # shellcheck disable=SC2046
  cc -std=c99 -Wall -Wextra -Werror tests/packaging/app.c $(pkg-config --cflags cmdop) \
     "$libdir/libcmdop.a" $(pkg-config --static --libs-only-l cmdop | sed 's/-lcmdop//') \
     -o "$work/app_static_pc"
}
check "C program links libcmdop.a with pkg-config --static" build_pkgconfig_static

build_cmake() {
  cmake -S tests/packaging/cmake -B "$work/cmake-build" -DCMAKE_PREFIX_PATH="$prefix" \
        -DCMAKE_BUILD_TYPE=Release &&
    cmake --build "$work/cmake-build" -j 2
}
check "CMake project builds with find_package(cmdop 1.0) + cmdop::cmdop" build_cmake
cmake_rejects_2_0() {
  mkdir -p "$work/cmake-v2" &&
    printf 'cmake_minimum_required(VERSION 3.16)\nproject(v LANGUAGES C)\nfind_package(cmdop 2.0 REQUIRED)\n' \
      >"$work/cmake-v2/CMakeLists.txt" &&
    ! cmake -S "$work/cmake-v2" -B "$work/cmake-v2/build" -DCMAKE_PREFIX_PATH="$prefix"
}
check "find_package(cmdop 2.0) is rejected as incompatible" cmake_rejects_2_0

echo "== running the programs against a real control plane + agent"
if ! start_stack >"$work/stack.log" 2>&1; then
  not_ok "start cmdop dev"; cat "$work/stack.log"
else
  # run_app NAME BINARY: runs a built app and checks it printed the marker.
  run_app() {
    local bin=$1 out
    [ -x "$bin" ] || { echo "$bin was not built"; return 1; }
    out=$("$bin" 'echo packaged-$((6*7))') || { echo "$out"; return 1; }
    echo "$out"
    grep -q 'packaged-42' <<<"$out"
  }
  uses_installed() {
    ldd "$1" | grep -q "libcmdop.so.$major => $libdir/libcmdop.so.$major"
  }
  check "pkg-config program runs a command on the agent" run_app "$work/app_pkgconfig"
  check "pkg-config program loads the installed libcmdop.so.$major" uses_installed "$work/app_pkgconfig"
  check "statically linked program runs a command on the agent" run_app "$work/app_static_pc"
  check "CMake program runs a command on the agent" run_app "$work/cmake-build/app"
  check "CMake program loads the installed libcmdop.so.$major" uses_installed "$work/cmake-build/app"
  check "CMake program linked to cmdop::cmdop_static runs a command" run_app "$work/cmake-build/app_static"
fi

check "make uninstall removes everything it installed" \
  bash -c "make -s uninstall PREFIX='$prefix' && [ -z \"\$(find '$prefix' -type f -o -type l)\" ]"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
