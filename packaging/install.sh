#!/usr/bin/env bash
# Installs or removes libcmdop the way a system library is laid out:
#
#   $LIBDIR/libcmdop.so.X.Y.Z, libcmdop.so.X -> .so.X.Y.Z, libcmdop.so -> .so.X
#     (stripped; its debug info in $LIBDIR/.debug/libcmdop.so.X.Y.Z.debug,
#     found by debuggers through the library's .gnu_debuglink)
#   $LIBDIR/libcmdop.a (debug info stripped)
#   $INCLUDEDIR/cmdop.h
#   $LIBDIR/pkgconfig/cmdop.pc
#   $LIBDIR/cmake/cmdop/cmdopConfig.cmake, cmdopConfigVersion.cmake
#
# Usage (normally through the root Makefile: `make install` / `make uninstall`):
#   packaging/install.sh install|uninstall
# Environment: PREFIX (default /usr/local), DESTDIR (staging root, default
# none), LIBDIR (default $PREFIX/lib), INCLUDEDIR (default $PREFIX/include),
# CARGO_TARGET_DIR (where `cargo build --release` put the library), and
# NO_BUILD=1 to install what is already built.
set -euo pipefail
cd "$(dirname "$0")/.."

action=${1:-}
PREFIX=${PREFIX:-/usr/local}
DESTDIR=${DESTDIR:-}
LIBDIR=${LIBDIR:-$PREFIX/lib}
INCLUDEDIR=${INCLUDEDIR:-$PREFIX/include}
target_dir=${CARGO_TARGET_DIR:-target}/release

die() { echo "install.sh: $*" >&2; exit 1; }

case "$PREFIX$LIBDIR$INCLUDEDIR" in
  /*) ;;
  *) die "PREFIX, LIBDIR and INCLUDEDIR must be absolute paths (got PREFIX=$PREFIX)" ;;
esac
for d in "$LIBDIR" "$INCLUDEDIR"; do
  case "$d" in /*) ;; *) die "LIBDIR and INCLUDEDIR must be absolute paths (got $d)" ;; esac
done

# The version of the root package, e.g. 1.0.0 (the workspace sets it); its
# major is CMDOP_ABI_VERSION and the soname's (packaging/README.md).
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)
[ -n "$version" ] || die "cannot read the version from Cargo.toml ([workspace.package] version)"
major=${version%%.*}

libdir=$DESTDIR$LIBDIR
incdir=$DESTDIR$INCLUDEDIR
pcdir=$libdir/pkgconfig
cmakedir=$libdir/cmake/cmdop

# Libraries a static link of libcmdop.a needs besides libc (what rustc
# reports with --print native-static-libs for this target).
static_libs="-lgcc_s -lutil -lrt -lpthread -lm -ldl"

install_files() {
  if [ "${NO_BUILD:-0}" != 1 ]; then
    cargo build -p cmdop --release --locked
  fi
  local so="$target_dir/libcmdop.so" a="$target_dir/libcmdop.a"
  [ -f "$so" ] && [ -f "$a" ] || die "$so or $a is missing: run 'cargo build -p cmdop --release' first"
  [ -f include/cmdop.h ] || die "include/cmdop.h is missing: build the cmdop crate to generate it"

  install -d "$libdir" "$libdir/.debug" "$incdir" "$pcdir" "$cmakedir"
  # Stripped library, debug info kept aside (as distributions do): the
  # debug file first, then a stripped copy that names it in .gnu_debuglink.
  local dbg="$libdir/.debug/libcmdop.so.$version.debug" tmp="$libdir/.libcmdop.so.$version.tmp"
  objcopy --only-keep-debug "$so" "$dbg"
  chmod 0644 "$dbg"
  objcopy --strip-debug --strip-unneeded --add-gnu-debuglink="$dbg" "$so" "$tmp"
  chmod 0755 "$tmp"
  mv -f "$tmp" "$libdir/libcmdop.so.$version"
  ln -sfn "libcmdop.so.$version" "$libdir/libcmdop.so.$major"
  ln -sfn "libcmdop.so.$major" "$libdir/libcmdop.so"
  install -m 0644 "$a" "$libdir/libcmdop.a"
  strip --strip-debug "$libdir/libcmdop.a"
  install -m 0644 include/cmdop.h "$incdir/cmdop.h"

  sed -e "s|@PREFIX@|$PREFIX|g" -e "s|@LIBDIR@|$LIBDIR|g" -e "s|@INCLUDEDIR@|$INCLUDEDIR|g" \
      -e "s|@VERSION@|$version|g" -e "s|@STATIC_LIBS@|$static_libs|g" \
      packaging/cmdop.pc.in >"$pcdir/cmdop.pc"
  chmod 0644 "$pcdir/cmdop.pc"

  # The CMake package finds the library relative to its own location, so a
  # staged (DESTDIR) or moved tree keeps working; only the directory layout
  # between cmake/cmdop and include/ is baked in.
  local rel_include
  rel_include=$(realpath -m --relative-to="$LIBDIR/cmake/cmdop" "$INCLUDEDIR")
  sed -e "s|@VERSION@|$version|g" -e "s|@MAJOR@|$major|g" -e "s|@REL_INCLUDEDIR@|$rel_include|g" \
      -e "s|@STATIC_LIBS@|$static_libs|g" \
      packaging/cmdopConfig.cmake.in >"$cmakedir/cmdopConfig.cmake"
  sed -e "s|@VERSION@|$version|g" packaging/cmdopConfigVersion.cmake.in >"$cmakedir/cmdopConfigVersion.cmake"
  chmod 0644 "$cmakedir"/*.cmake

  echo "installed libcmdop $version into ${DESTDIR}${PREFIX}"
}

uninstall_files() {
  rm -f "$libdir/libcmdop.so.$version" "$libdir/libcmdop.so.$major" "$libdir/libcmdop.so" \
        "$libdir/.debug/libcmdop.so.$version.debug" \
        "$libdir/libcmdop.a" "$incdir/cmdop.h" "$pcdir/cmdop.pc" \
        "$cmakedir/cmdopConfig.cmake" "$cmakedir/cmdopConfigVersion.cmake"
  # Remove the directories we created only when nothing else lives there.
  rmdir "$cmakedir" "$libdir/.debug" 2>/dev/null || true
  echo "removed libcmdop $version from ${DESTDIR}${PREFIX}"
}

case "$action" in
  install) install_files ;;
  uninstall) uninstall_files ;;
  *) die "usage: $0 install|uninstall (PREFIX=… DESTDIR=… LIBDIR=… INCLUDEDIR=…)" ;;
esac
