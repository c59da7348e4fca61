#!/usr/bin/env bash
# Builds the Debian packages (`make deb`), with dpkg-deb from a release build:
#
#   cmdop          /usr/bin/cmdop, its manual pages and bash/zsh/fish
#                  completions, the systemd units (packaging/systemd/),
#                  example settings in /etc/cmdop/ (conffiles), a `cmdop`
#                  system user made by postinst
#   libcmdop1      the shared library (soname libcmdop.so.1)
#   libcmdop-dev   header, static library, libcmdop.so link, pkg-config and
#                  CMake files (laid out by packaging/install.sh)
#
# Dependencies on libc and libgcc come from dpkg-shlibdeps. The packages land
# in $CARGO_TARGET_DIR/debian/ (default target/debian/); the script prints
# their paths. NO_BUILD=1 packages what is already built.
set -euo pipefail
cd "$(dirname "$0")/../.."

die() { echo "packaging/deb/build.sh: $*" >&2; exit 1; }
for tool in dpkg-deb dpkg-shlibdeps dpkg-architecture objcopy; do
  command -v "$tool" >/dev/null || die "$tool is missing; install with: apt-get install dpkg-dev binutils"
done

target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir=$PWD/$target_dir ;; esac
export CARGO_TARGET_DIR=$target_dir
release=$target_dir/release
out=$target_dir/debian
arch=$(dpkg-architecture -qDEB_HOST_ARCH)
multiarch=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || die "cannot read the version from Cargo.toml ([workspace.package] version)"
major=${version%%.*}
maintainer="libcmdop maintainers <libcmdop@localhost>"

if [ "${NO_BUILD:-0}" != 1 ]; then
  cargo build --release --locked -p cmdop -p cmdop-cli
fi
[ -x "$release/cmdop" ] || die "$release/cmdop is missing: run 'cargo build --release -p cmdop-cli' first"

work=$(mktemp -d -t cmdop-deb-XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$out"

# The library tree, as `make install` lays it out for /usr.
stage=$work/stage
NO_BUILD=1 PREFIX=/usr LIBDIR="/usr/lib/$multiarch" INCLUDEDIR=/usr/include DESTDIR="$stage" \
  packaging/install.sh install >/dev/null

# The Depends line dpkg-shlibdeps computes for these ELF files.
depends_of() {
  local pkgroot=$1 deps; shift
  mkdir -p "$work/shlibs/debian"
  printf 'Source: cmdop\n\nPackage: x\nArchitecture: any\n' >"$work/shlibs/debian/control"
  deps=$(cd "$work/shlibs" && dpkg-shlibdeps -O -S"$pkgroot" "$@" | sed -n 's/^shlibs:Depends=//p')
  [ -n "$deps" ] || die "dpkg-shlibdeps found no dependencies for $*"
  echo "$deps"
}

license=$(sed -n '/^\[workspace.package\]/,/^\[/s/^license *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
copyright() {
  printf 'Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\nUpstream-Name: libcmdop\n\nFiles: *\nCopyright: libcmdop authors\nLicense: %s\n' \
    "$license" >"$1/copyright"
  chmod 0644 "$1/copyright"
}

# control NAME DIR FIELDS...: writes DIR/DEBIAN/control.
control() {
  local name=$1 dir=$2; shift 2
  mkdir -p "$dir/DEBIAN"
  {
    echo "Package: $name"
    echo "Version: $version"
    echo "Architecture: $arch"
    echo "Maintainer: $maintainer"
    echo "Installed-Size: $(du -sk --exclude=DEBIAN "$dir" | cut -f1)"
    printf '%s\n' "$@"
  } >"$dir/DEBIAN/control"
}

build() {
  local dir=$1
  find "$dir" -path "$dir/DEBIAN" -prune -o -type d -exec chmod 0755 {} +
  dpkg-deb --root-owner-group -Zxz --build "$dir" "$out" >/dev/null
}

lib=/usr/lib/$multiarch

# libcmdop1
p=$work/libcmdop1
install -d "$p$lib" "$p/usr/share/doc/libcmdop1"
cp -a "$stage$lib/libcmdop.so.$version" "$stage$lib/libcmdop.so.$major" "$p$lib/"
copyright "$p/usr/share/doc/libcmdop1"
mkdir -p "$p/DEBIAN"
echo "libcmdop $major libcmdop$major (>= $version)" >"$p/DEBIAN/shlibs"
printf 'activate-noawait ldconfig\n' >"$p/DEBIAN/triggers"
control libcmdop1 "$p" \
  "Section: libs" "Priority: optional" \
  "Depends: $(depends_of "$p" "$p$lib/libcmdop.so.$version")" \
  "Description: C client library for CMDOP control planes" \
  " libcmdop runs commands on, and moves files to and from, machines managed" \
  " by a CMDOP control plane, from C, C++, Go and Swift."
build "$p"

# libcmdop-dev
p=$work/libcmdop-dev
install -d "$p$lib" "$p/usr/include" "$p/usr/share/doc/libcmdop-dev"
copyright "$p/usr/share/doc/libcmdop-dev"
cp -a "$stage$lib/libcmdop.so" "$stage$lib/libcmdop.a" "$stage$lib/pkgconfig" "$stage$lib/cmake" "$p$lib/"
cp -a "$stage/usr/include/cmdop.h" "$p/usr/include/"
control libcmdop-dev "$p" \
  "Section: libdevel" "Priority: optional" \
  "Depends: libcmdop1 (= $version)" \
  "Description: C client library for CMDOP control planes (development files)" \
  " The header, the static library, pkg-config (cmdop) and CMake" \
  " (find_package(cmdop)) files for building programs with libcmdop."
build "$p"

# cmdop
p=$work/cmdop
install -d "$p/usr/bin" "$p/lib/systemd/system" "$p/etc/cmdop" "$p/usr/share/doc/cmdop"
objcopy --strip-debug --strip-unneeded "$release/cmdop" "$p/usr/bin/cmdop"
chmod 0755 "$p/usr/bin/cmdop"
install -m 0644 packaging/systemd/cmdop-server.service packaging/systemd/cmdop-agent.service \
  "$p/lib/systemd/system/"
install -m 0640 packaging/deb/server.toml packaging/deb/agent.toml "$p/etc/cmdop/"
install -m 0644 README.md "$p/usr/share/doc/cmdop/"
# Manual pages (compressed, as Debian policy asks) and shell completions,
# from the staged `make install` tree; zsh's go where Debian's zsh looks.
install -d "$p/usr/share/man/man1" "$p/usr/share/bash-completion/completions" \
  "$p/usr/share/zsh/vendor-completions" "$p/usr/share/fish/vendor_completions.d"
for page in "$stage"/usr/share/man/man1/cmdop*.1; do
  gzip -9n -c "$page" >"$p/usr/share/man/man1/$(basename "$page").gz"
done
chmod 0644 "$p"/usr/share/man/man1/*.gz
install -m 0644 "$stage/usr/share/bash-completion/completions/cmdop" \
  "$p/usr/share/bash-completion/completions/cmdop"
install -m 0644 "$stage/usr/share/zsh/site-functions/_cmdop" "$p/usr/share/zsh/vendor-completions/_cmdop"
install -m 0644 "$stage/usr/share/fish/vendor_completions.d/cmdop.fish" \
  "$p/usr/share/fish/vendor_completions.d/cmdop.fish"
copyright "$p/usr/share/doc/cmdop"
mkdir -p "$p/DEBIAN"
printf '/etc/cmdop/server.toml\n/etc/cmdop/agent.toml\n' >"$p/DEBIAN/conffiles"
install -m 0755 packaging/deb/cmdop.postinst "$p/DEBIAN/postinst"
control cmdop "$p" \
  "Section: admin" "Priority: optional" \
  "Depends: $(depends_of "$p" "$p/usr/bin/cmdop"), adduser" \
  "Description: CMDOP control plane, machine agent and client" \
  " One binary: cmdop server (the control plane, gRPC with SQLite or" \
  " PostgreSQL state), cmdop agent (runs commands and serves files on this" \
  " machine), cmdop admin and the client commands (exec, cp, machines)." \
  " systemd units: cmdop-server.service, cmdop-agent.service."
build "$p"

ls -1 "$out"/cmdop_"$version"_"$arch".deb "$out"/libcmdop1_"$version"_"$arch".deb \
  "$out"/libcmdop-dev_"$version"_"$arch".deb
