# Entry points; see README.md.
.PHONY: demo test build install uninstall deb

# Where `make install` puts libcmdop (DESTDIR stages the tree for packagers).
PREFIX ?= /usr/local
LIBDIR ?= $(PREFIX)/lib
INCLUDEDIR ?= $(PREFIX)/include
BINDIR ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
DESTDIR ?=

demo:
	scripts/demo.sh

test:
	scripts/test.sh

build:
	cargo build --workspace --release

# Release build, then lib/libcmdop.so.X.Y.Z (+ .so.X, .so), lib/libcmdop.a,
# include/cmdop.h, lib/pkgconfig/cmdop.pc, lib/cmake/cmdop/ (cmdop::cmdop),
# bin/cmdop, its manual pages and its bash, zsh and fish completions.
install:
	PREFIX="$(PREFIX)" LIBDIR="$(LIBDIR)" INCLUDEDIR="$(INCLUDEDIR)" BINDIR="$(BINDIR)" DATADIR="$(DATADIR)" MANDIR="$(MANDIR)" DESTDIR="$(DESTDIR)" packaging/install.sh install

uninstall:
	PREFIX="$(PREFIX)" LIBDIR="$(LIBDIR)" INCLUDEDIR="$(INCLUDEDIR)" BINDIR="$(BINDIR)" DATADIR="$(DATADIR)" MANDIR="$(MANDIR)" DESTDIR="$(DESTDIR)" packaging/install.sh uninstall

# Debian packages cmdop, libcmdop1 and libcmdop-dev in target/debian/
# (packaging/deb/build.sh; a release build first).
deb:
	packaging/deb/build.sh
