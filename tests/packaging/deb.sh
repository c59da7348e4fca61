#!/usr/bin/env bash
# Builds the Debian packages (`make deb`), checks their metadata, unpacks
# them with dpkg into a scratch root (the machine itself is left alone), and
# uses what they installed: the packaged `cmdop dev` runs a control plane and
# an agent, and a C program built through pkg-config against the packaged
# library runs a command on it.
# Prints `N passed, M failed`; exits non-zero when anything failed.
set -uo pipefail
cd "$(dirname "$0")/../.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"

work=$(mktemp -d -t cmdop-deb-test-XXXXXX)
root=$work/root
CMDOP_BIN=$root/usr/bin/cmdop
. tests/harness.sh
cleanup() { stop_stack; rm -rf "$work"; }
trap cleanup EXIT

passed=0
failed=0
ok() { passed=$((passed + 1)); echo "ok   - $1"; }
not_ok() { failed=$((failed + 1)); echo "FAIL - $1"; [ -f "$work/log" ] && sed 's/^/       /' "$work/log"; }
# contains ARGS...: grep that reads all its input (grep -q stops at the
# first match, and under pipefail the writer's SIGPIPE would fail the pipe).
contains() { grep "$@" >/dev/null; }
# check NAME CMD...: CMD (a function: every command in it must succeed, as
# under set -e, which an `if` around it would switch off).
check() {
  local name=$1 rc; shift
  ( set -e; "$@" ) >"$work/log" 2>&1
  rc=$?
  if [ "$rc" -eq 0 ]; then ok "$name"; else not_ok "$name"; fi
  rm -f "$work/log"
}
finish() { echo "$passed passed, $failed failed"; [ "$failed" -eq 0 ]; exit $?; }

echo "== make deb"
if ! make -s deb >"$work/built" 2>"$work/log"; then
  not_ok "make deb"
  finish
fi
rm -f "$work/log"
ok "make deb"
mapfile -t debs < <(grep '\.deb$' "$work/built")
deb_of() { printf '%s\n' "${debs[@]}" | grep "/$1_"; }
field() { dpkg-deb -f "$(deb_of "$1")" "$2"; }

check "three packages: cmdop, libcmdop1, libcmdop-dev" \
  test -f "$(deb_of cmdop)" -a -f "$(deb_of libcmdop1)" -a -f "$(deb_of libcmdop-dev)"
version=$(field cmdop Version)
depends_right() {
  field cmdop Depends | tee /dev/stderr | contains 'libc6 (>='
  field cmdop Depends | contains adduser
  field libcmdop1 Depends | tee /dev/stderr | contains 'libc6 (>='
  [ "$(field libcmdop-dev Depends)" = "libcmdop1 (= $version)" ]
}
check "dependencies (libc6 from dpkg-shlibdeps; -dev on the same libcmdop1)" depends_right
units_and_conffiles() {
  dpkg-deb -c "$(deb_of cmdop)" | contains './lib/systemd/system/cmdop-server.service'
  dpkg-deb -c "$(deb_of cmdop)" | contains './lib/systemd/system/cmdop-agent.service'
  dpkg-deb -e "$(deb_of cmdop)" "$work/control"
  grep -qx /etc/cmdop/server.toml "$work/control/conffiles"
  grep -qx /etc/cmdop/agent.toml "$work/control/conffiles"
}
check "cmdop ships the units and its settings as conffiles" units_and_conffiles
pages_and_completions() {
  local listing
  listing=$(dpkg-deb -c "$(deb_of cmdop)")
  echo "$listing" | contains './usr/share/man/man1/cmdop.1.gz'
  echo "$listing" | contains './usr/share/man/man1/cmdop-exec.1.gz'
  echo "$listing" | contains './usr/share/bash-completion/completions/cmdop'
  echo "$listing" | contains './usr/share/zsh/vendor-completions/_cmdop'
  echo "$listing" | contains './usr/share/fish/vendor_completions.d/cmdop.fish'
}
check "cmdop ships its manual pages and bash, zsh and fish completions" pages_and_completions

mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
# Unpacked, not configured: postinst would add a user to the machine.
check "dpkg --root unpacks all three" \
  dpkg --root="$root" --force-depends --force-not-root --unpack "${debs[@]}"
check "dpkg lists them as unpacked" \
  sh -c "dpkg --root='$root' -l cmdop libcmdop1 libcmdop-dev | grep -c '^iU' | grep -qx 3"
# Unpacked conffiles wait as FILE.dpkg-new until the package is configured.
conffile() { [ -f "$root$1" ] && echo "$root$1" || echo "$root$1.dpkg-new"; }
man_page_renders() {
  MANPATH=$root/usr/share/man man -P cat cmdop-exec 2>/dev/null | contains -- '--timeout'
}
check "man cmdop-exec renders the packaged page" man_page_renders
bash_completes() {
  # Loads the packaged completion and asks it for `cmdop ex<TAB>`.
  bash -c '. "$1"; COMP_WORDS=(cmdop ex); COMP_CWORD=1; COMP_LINE="cmdop ex"; COMP_POINT=8
           _cmdop cmdop ex cmdop; printf "%s\n" "${COMPREPLY[@]}"' _ \
    "$root/usr/share/bash-completion/completions/cmdop" | contains -x exec
}
check "the packaged bash completion completes cmdop ex to exec" bash_completes
check "the packaged settings pass cmdop server --check" \
  "$CMDOP_BIN" server --config "$(conffile /etc/cmdop/server.toml)" --check
check "the packaged settings pass cmdop agent --check" \
  "$CMDOP_BIN" agent --config "$(conffile /etc/cmdop/agent.toml)" --check

multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
libdir=$root/usr/lib/$multiarch
export PKG_CONFIG_SYSROOT_DIR=$root PKG_CONFIG_LIBDIR=$libdir/pkgconfig
check "pkg-config finds cmdop $version" sh -c "[ \"\$(pkg-config --modversion cmdop)\" = '$version' ]"
check "a C program builds against the packaged library" \
  sh -c "cc -o '$work/app' tests/packaging/app.c \$(pkg-config --cflags --libs cmdop)"

if start_stack; then
  ok "the packaged cmdop dev starts a control plane and an agent"
  run_app() {
    local out
    out=$(LD_LIBRARY_PATH="$libdir" "$work/app" 'echo packaged') || return 1
    echo "$out"
    [ "$(echo "$out" | head -n1)" = "libcmdop $version" ] || return 1
    [ "$(echo "$out" | tail -n1)" = packaged ] || return 1
    LD_LIBRARY_PATH="$libdir" ldd "$work/app" | contains "$libdir/libcmdop.so.${version%%.*}"
  }
  check "the C program runs a command through the packaged library" run_app
else
  not_ok "the packaged cmdop dev starts a control plane and an agent"
fi
stop_stack

# A real installation with dpkg -i on this machine (CI runs as root on a
# fresh machine), purged again at the end: postinst runs (the cmdop user,
# the settings' group), ldconfig's trigger makes the library findable with
# no LD_LIBRARY_PATH, pkg-config finds it in the default paths.
installed_here=
had_user=$(getent passwd cmdop || true)
purge_installed() {
  [ -n "$installed_here" ] || return 0
  dpkg -P cmdop libcmdop-dev libcmdop1 >/dev/null 2>&1
  [ -n "$had_user" ] || deluser --system cmdop >/dev/null 2>&1 || userdel cmdop >/dev/null 2>&1 || true
  installed_here=
}
trap 'purge_installed; cleanup' EXIT
if [ "$(id -u)" != 0 ]; then
  echo "SKIPPED dpkg -i on this machine: needs root (running as uid $(id -u)); the scratch-root checks above ran"
elif dpkg -s cmdop >/dev/null 2>&1 || dpkg -s libcmdop1 >/dev/null 2>&1 || [ -e /usr/bin/cmdop ]; then
  echo "SKIPPED dpkg -i on this machine: cmdop is already installed here; the scratch-root checks above ran"
else
  installed_here=1
  check "dpkg -i installs and configures all three" dpkg -i "${debs[@]}"
  check "dpkg lists all three as installed" \
    sh -c "dpkg -l cmdop libcmdop1 libcmdop-dev | grep -c '^ii' | grep -qx 3"
  check "/usr/bin/cmdop runs" sh -c "/usr/bin/cmdop --version | grep -qF '$version'"
  settings_for_the_user() {
    getent passwd cmdop
    [ "$(stat -c '%G %a' /etc/cmdop/server.toml)" = "cmdop 640" ]
    runuser -u cmdop -- /usr/bin/cmdop server --config /etc/cmdop/server.toml --check
  }
  check "postinst made the cmdop user, who can read and check the server settings" settings_for_the_user
  check "pkg-config finds the installed cmdop $version" \
    env -u PKG_CONFIG_SYSROOT_DIR -u PKG_CONFIG_LIBDIR sh -c "[ \"\$(pkg-config --modversion cmdop)\" = '$version' ]"
  installed_app() {
    cc -o "$work/app-installed" tests/packaging/app.c $(env -u PKG_CONFIG_SYSROOT_DIR -u PKG_CONFIG_LIBDIR pkg-config --cflags --libs cmdop)
    # /lib is /usr/lib on a merged-/usr system; either is the package's file.
    ldd "$work/app-installed" | contains -E "libcmdop\.so\.${version%%.*} => (/usr)?/lib/$multiarch/libcmdop\.so\.${version%%.*} "
  }
  check "a C program builds with pkg-config and finds libcmdop through ldconfig" installed_app
  purge_installed
  check "dpkg -P removes them again" sh -c "! dpkg -s cmdop >/dev/null 2>&1 && [ ! -e /usr/bin/cmdop ]"
fi
finish
