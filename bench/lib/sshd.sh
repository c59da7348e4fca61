# A private OpenSSH server on a loopback port, for the peer measurements:
# own config, own host key, own user key, nothing under /etc touched.
#
#   . bench/lib/sshd.sh
#   bench_ssh_check            # fails with install advice when OpenSSH is missing
#   bench_sshd_start DIR       # sets BENCH_SSH_CONFIG (ssh -F file, host alias "bench")
#   bench_ssh_master_start     # opens a ControlMaster; sets BENCH_SSH_CM_OPTS

BENCH_SSHD_BIN=${BENCH_SSHD_BIN:-}

bench_ssh_check() {
  local missing=()
  if [ -z "$BENCH_SSHD_BIN" ]; then
    BENCH_SSHD_BIN=$(command -v sshd 2>/dev/null || true)
    [ -n "$BENCH_SSHD_BIN" ] || { [ -x /usr/sbin/sshd ] && BENCH_SSHD_BIN=/usr/sbin/sshd; }
  fi
  [ -n "$BENCH_SSHD_BIN" ] || missing+=(sshd)
  for tool in ssh scp ssh-keygen; do command -v "$tool" >/dev/null 2>&1 || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "OpenSSH is missing (${missing[*]}); install it with:" >&2
    echo "  sudo apt-get install openssh-server openssh-client     # Debian/Ubuntu" >&2
    echo "  sudo dnf install openssh-server openssh-clients        # Fedora/RHEL" >&2
    return 1
  fi
}

# Starts sshd on a free 127.0.0.1 port with everything under $1.
bench_sshd_start() {
  local dir=$1 port user
  mkdir -p "$dir"
  chmod 700 "$dir"
  port=$(bench_free_port)
  user=$(id -un)
  ssh-keygen -q -t ed25519 -N '' -C cmdop-bench-host -f "$dir/host_key"
  ssh-keygen -q -t ed25519 -N '' -C cmdop-bench-user -f "$dir/user_key"
  # The session's HOME is an empty directory: bash sources ~/.bashrc for
  # commands run by sshd, and the account's start-up files (whatever this
  # machine's owner put there) are not what is being measured. The agent
  # does not read them either.
  mkdir -p "$dir/home"
  printf 'environment="HOME=%s" %s\n' "$dir/home" "$(cat "$dir/user_key.pub")" >"$dir/authorized_keys"
  chmod 600 "$dir/authorized_keys"

  # sshd insists on its privilege-separation directory when started as root.
  if [ "$(id -u)" -eq 0 ] && [ ! -d /run/sshd ]; then
    mkdir -p /run/sshd && chmod 755 /run/sshd
  fi

  cat >"$dir/sshd_config" <<EOF
# cmdop benchmark sshd: loopback only, key auth only.
ListenAddress 127.0.0.1
Port $port
HostKey $dir/host_key
PidFile $dir/sshd.pid
AuthorizedKeysFile $dir/authorized_keys
AllowUsers $user
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
PrintLastLog no
UseDNS no
PermitUserEnvironment HOME
# Concurrency cases open up to 64 sessions at once, plain and multiplexed.
MaxStartups 256
MaxSessions 256
Subsystem sftp internal-sftp
LogLevel ERROR
EOF

  cat >"$dir/ssh_config" <<EOF
Host bench
  HostName 127.0.0.1
  Port $port
  User $user
  IdentityFile $dir/user_key
  IdentitiesOnly yes
  StrictHostKeyChecking no
  UserKnownHostsFile $dir/known_hosts
  BatchMode yes
  LogLevel ERROR
  ControlPath $dir/cm.sock
EOF
  BENCH_SSH_CONFIG=$dir/ssh_config
  BENCH_SSH_DIR=$dir

  "$BENCH_SSHD_BIN" -D -e -f "$dir/sshd_config" 2>"$dir/sshd.log" &
  local pid=$!
  bench_own_pid "$pid"
  for _ in $(seq 100); do
    if ssh -F "$BENCH_SSH_CONFIG" -o ControlMaster=no -o ControlPath=none bench true 2>/dev/null; then
      bench_log "sshd up on 127.0.0.1:$port ($("$BENCH_SSHD_BIN" -V 2>&1 | head -n1 || true))"
      return 0
    fi
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  echo "the benchmark sshd did not come up; its log:" >&2
  cat "$dir/sshd.log" >&2
  return 1
}

# Opens a ControlMaster connection that later ssh/scp calls reuse.
bench_ssh_master_start() {
  ssh -F "$BENCH_SSH_CONFIG" -o ControlMaster=yes -o ControlPersist=yes -fN bench
  bench_on_exit "ssh -F '$BENCH_SSH_CONFIG' -O exit bench"
  ssh -F "$BENCH_SSH_CONFIG" -O check bench 2>/dev/null || {
    echo "could not open an ssh ControlMaster" >&2
    return 1
  }
  # Later calls: reuse the master, never start one of their own.
  BENCH_SSH_CM_OPTS=(-o ControlMaster=no)
  BENCH_SSH_PLAIN_OPTS=(-o ControlMaster=no -o ControlPath=none)
}
