#!/usr/bin/env bash
# Checks every tool and package the test suites (`make test`) and the
# benchmarks (`bench/run`) need, and installs what is missing:
#   - system packages with apt-get, when running as root or with sudo that
#     needs no password;
#   - Rust (rustup), its rustfmt/clippy components and the Node interop's npm
#     packages, as the current user.
# Where it cannot install, it stops at once with one line naming what is
# missing and the command that installs it. Called by scripts/test.sh and
# .ci/run; safe to run by hand at any time (it changes nothing when all is
# there).
#
#   scripts/deps.sh
#
# Environment:
#   CMDOP_DEPS_INSTALL=never   only check (never install anything)
#   CMDOP_DEPS_DRY_RUN=1       print the install commands instead of running them
#   CMDOP_GTEST_HEADER=FILE    GoogleTest's header (default /usr/include/gtest/gtest.h)
set -euo pipefail
cd "$(dirname "$0")/.."

gtest_header=${CMDOP_GTEST_HEADER:-/usr/include/gtest/gtest.h}
dry_run=${CMDOP_DEPS_DRY_RUN:-}
# Go 1.21 and later fetch the toolchain bindings/go/go.mod asks for by
# themselves (from the Go module proxy), so 1.21 is the real floor.
go_floor=21
node_floor=18

have() { command -v "$1" >/dev/null 2>&1; }
say() { echo "scripts/deps.sh: $*" >&2; }
run() {
  if [ -n "$dry_run" ]; then echo "scripts/deps.sh: would run: $*" >&2; else "$@"; fi
}

# Who may install system packages: root, or sudo without a password.
sudo_cmd=none
if [ "${CMDOP_DEPS_INSTALL:-auto}" != never ]; then
  if [ "$(id -u)" -eq 0 ]; then
    sudo_cmd=
  elif have sudo && sudo -n true 2>/dev/null; then
    sudo_cmd=sudo
  fi
fi
may_install_user() { [ "${CMDOP_DEPS_INSTALL:-auto}" != never ]; }

# What is missing: a label for the message, and the Debian package for it.
missing=()
packages=()
lack() { missing+=("$1"); packages+=("$2"); }

check_system() {
  missing=()
  packages=()
  have cc || lack "cc" build-essential
  have c++ || lack "c++" build-essential
  have make || lack "make" build-essential
  { have objdump && have readelf; } || lack "objdump/readelf" binutils
  have clang || lack "clang" clang
  have cmake || lack "cmake" cmake
  have pkg-config || lack "pkg-config" pkg-config
  [ -f "$gtest_header" ] || lack "GoogleTest ($gtest_header)" libgtest-dev
  have git || lack "git" git
  have curl || lack "curl" curl
  [ -f /etc/ssl/certs/ca-certificates.crt ] || lack "CA certificates" ca-certificates
  have ps || lack "ps" procps
  # tests/packaging renders the installed manual page with `man -l`.
  have man || lack "man" man-db
  # bench/run makes a throwaway CA for its TLS stack.
  have openssl || lack "openssl" openssl
  have go || lack "go" golang-go
  have node || lack "node" nodejs
  have npm || lack "npm" npm
  { have sshd || [ -x /usr/sbin/sshd ]; } || lack "sshd" openssh-server
  { have ssh && have scp && have ssh-keygen; } || lack "ssh" openssh-client
  # bench/run's fleet case compares the fan-out with parallel-ssh.
  have parallel-ssh || lack "parallel-ssh" pssh
  # cli/tests/metrics.rs scrapes a server and an agent with a real Prometheus.
  have prometheus || lack "prometheus" prometheus
  # make deb and tests/packaging/deb.sh (dpkg-shlibdeps, dpkg-architecture).
  have dpkg-shlibdeps || lack "dpkg-dev" dpkg-dev
  # The PostgreSQL store tests start a throwaway server (initdb, postgres).
  compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || lack "PostgreSQL" postgresql
  if ! have python3; then
    lack "python3" python3
    lack "python3 venv" python3-venv
    lack "pip" python3-pip
  else
    python3 -c 'import venv, ensurepip' 2>/dev/null || lack "python3 venv" python3-venv
    python3 -m pip --version >/dev/null 2>&1 || lack "pip" python3-pip
  fi
}

# One line: what is missing and the exact command that installs it.
apt_line() {
  local prefix=sudo
  [ "$(id -u)" -eq 0 ] && prefix=
  local pkgs
  pkgs=$(printf '%s\n' "${packages[@]}" | awk '!seen[$0]++' | tr '\n' ' ')
  echo "${prefix:+$prefix }apt-get install -y --no-install-recommends ${pkgs% }"
}

check_system
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$sudo_cmd" = none ]; then
    say "missing $(IFS=,; echo "${missing[*]}" | sed 's/,/, /g'); install with: $(apt_line)"
    exit 1
  fi
  say "installing $(IFS=,; echo "${missing[*]}" | sed 's/,/, /g')"
  mapfile -t unique < <(printf '%s\n' "${packages[@]}" | awk '!seen[$0]++')
  run ${sudo_cmd:+$sudo_cmd} apt-get update -qq
  run ${sudo_cmd:+$sudo_cmd} env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-install-recommends "${unique[@]}"
  if [ -z "$dry_run" ]; then
    check_system
    if [ ${#missing[@]} -gt 0 ]; then
      say "still missing after apt-get: $(IFS=,; echo "${missing[*]}" | sed 's/,/, /g'); install with: $(apt_line)"
      exit 1
    fi
  fi
fi

# Versions the suites rely on.
if have go; then
  go_minor=$(go env GOVERSION 2>/dev/null | sed -n 's/^go1\.\([0-9]*\).*/\1/p')
  if [ -n "$go_minor" ] && [ "$go_minor" -lt "$go_floor" ]; then
    say "go 1.$go_minor is too old (bindings/go needs 1.$go_floor or later); install with: curl -sSfL https://go.dev/dl/go1.24.0.linux-amd64.tar.gz | sudo tar -C /usr/local -xz && export PATH=/usr/local/go/bin:\$PATH"
    exit 1
  fi
fi
if have node; then
  node_major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
  if [ "$node_major" -lt "$node_floor" ]; then
    say "node $node_major is too old (the Node interop needs $node_floor or later); install a newer nodejs, e.g. from https://deb.nodesource.com"
    exit 1
  fi
fi

# Rust, with the components scripts/test.sh runs.
if ! have cargo && [ -x "$HOME/.cargo/bin/cargo" ]; then
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if ! have cargo; then
  if ! may_install_user; then
    say "missing cargo; install with: curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy"
    exit 1
  fi
  say "installing Rust with rustup"
  run sh -c "curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --component rustfmt,clippy"
  [ -n "$dry_run" ] || export PATH="$HOME/.cargo/bin:$PATH"
fi
if [ -z "$dry_run" ] && { ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; }; then
  if ! may_install_user || ! have rustup; then
    say "missing rustfmt or clippy; install with: rustup component add rustfmt clippy"
    exit 1
  fi
  run rustup component add rustfmt clippy
fi

# The Node interop's npm packages (the official @cmdop/node SDK, grpc-js).
if [ ! -d tests/interop/node/node_modules/@cmdop/node ] ||
   [ ! -d tests/interop/node/node_modules/@grpc/grpc-js ]; then
  if ! may_install_user; then
    say "missing the Node interop's npm packages; install with: (cd tests/interop/node && npm install)"
    exit 1
  fi
  say "installing the Node interop's npm packages"
  # npm install, not npm ci: the lock file is not committed (the version is
  # pinned in package.json).
  run sh -c "cd tests/interop/node && npm install --no-audit --no-fund --loglevel=error"
fi
