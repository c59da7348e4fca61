/* tcp_floor: the physical floor of a bulk transfer on this machine. Copies
 * the stdout of `head -c N /dev/zero` through one loopback TCP connection
 * with splice(2) on both sides, so no byte is copied to user space:
 *
 *   head -c N /dev/zero | [pipe] --splice--> socket ==loopback==> socket
 *     --splice--> [pipe] --splice--> /dev/null
 *
 *   tcp_floor --bytes N[K|M|G]
 *
 * One run per invocation (bench/run times it with spawn_bench, like the ssh
 * peer): exits 0 when the receiving side counted exactly N bytes, else
 * non-zero with the reason on stderr. */
#include "bench_common.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* Bytes moved per splice call (the pipes are enlarged to match). */
#define CHUNK (1024 * 1024)

/* Moves everything from `in` to `out` through the pipe `p` (splice both
 * ways); returns the bytes moved, or -1 after describing the failure. */
static int64_t splice_all(int in, int out, int p[2], const char *what) {
  int64_t total = 0;
  for (;;) {
    ssize_t n = splice(in, NULL, p[1], NULL, CHUNK, SPLICE_F_MOVE | SPLICE_F_MORE);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      fprintf(stderr, "tcp_floor: %s: splice in: %s\n", what, strerror(errno));
      return -1;
    }
    if (n == 0) return total;
    total += n;
    while (n > 0) {
      ssize_t m = splice(p[0], NULL, out, NULL, (size_t)n, SPLICE_F_MOVE | SPLICE_F_MORE);
      if (m < 0 && errno == EINTR) continue;
      if (m <= 0) {
        fprintf(stderr, "tcp_floor: %s: splice out: %s\n", what, m < 0 ? strerror(errno) : "end");
        return -1;
      }
      n -= m;
    }
  }
}

/* Moves everything from the pipe `in` to `out`; bytes moved or -1. */
static int64_t splice_from_pipe(int in, int out, const char *what) {
  int64_t total = 0;
  for (;;) {
    ssize_t n = splice(in, NULL, out, NULL, CHUNK, SPLICE_F_MOVE | SPLICE_F_MORE);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      fprintf(stderr, "tcp_floor: %s: splice: %s\n", what, strerror(errno));
      return -1;
    }
    if (n == 0) return total;
    total += n;
  }
}

static void make_pipe(int p[2]) {
  if (pipe2(p, O_CLOEXEC) != 0) bench_die("pipe: %s", strerror(errno));
  (void)fcntl(p[1], F_SETPIPE_SZ, CHUNK); /* best effort: a smaller pipe still works */
}

/* The receiving side, in a child: accept one connection, discard it all. */
static void receiver(int listener, uint64_t expect) {
  int c = accept(listener, NULL, NULL);
  if (c < 0) {
    fprintf(stderr, "tcp_floor: accept: %s\n", strerror(errno));
    _exit(1);
  }
  int null = open("/dev/null", O_WRONLY | O_CLOEXEC);
  if (null < 0) {
    fprintf(stderr, "tcp_floor: /dev/null: %s\n", strerror(errno));
    _exit(1);
  }
  int p[2];
  make_pipe(p);
  int64_t got = splice_all(c, null, p, "receiver");
  if (got < 0) _exit(1);
  if ((uint64_t)got != expect) {
    fprintf(stderr, "tcp_floor: received %" PRId64 " bytes, expected %" PRIu64 "\n", got, expect);
    _exit(1);
  }
  _exit(0);
}

static int wait_ok(pid_t pid, const char *what) {
  int status = 0;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) {
      fprintf(stderr, "tcp_floor: waitpid %s: %s\n", what, strerror(errno));
      return 0;
    }
  }
  if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return 1;
  fprintf(stderr, "tcp_floor: %s failed (status %d)\n", what, status);
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 3 || strcmp(argv[1], "--bytes") != 0) {
    fputs("usage: tcp_floor --bytes N[K|M|G]\n", stderr);
    return 2;
  }
  uint64_t bytes = bench_parse_size("--bytes", argv[2]);
  signal(SIGPIPE, SIG_IGN);

  int listener = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (listener < 0) bench_die("socket: %s", strerror(errno));
  struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = 0};
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t alen = sizeof addr;
  if (bind(listener, (struct sockaddr *)&addr, sizeof addr) != 0 || listen(listener, 1) != 0 ||
      getsockname(listener, (struct sockaddr *)&addr, &alen) != 0)
    bench_die("cannot listen on 127.0.0.1: %s", strerror(errno));

  fflush(NULL);
  pid_t rx = fork();
  if (rx < 0) bench_die("fork: %s", strerror(errno));
  if (rx == 0) receiver(listener, bytes);
  close(listener);

  int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (s < 0 || connect(s, (struct sockaddr *)&addr, sizeof addr) != 0)
    bench_die("cannot connect to 127.0.0.1:%u: %s", ntohs(addr.sin_port), strerror(errno));

  /* head writes into a pipe whose read end is spliced into the socket. */
  int src[2];
  make_pipe(src);
  char count[32];
  snprintf(count, sizeof count, "%" PRIu64, bytes);
  char *head_argv[] = {"head", "-c", count, "/dev/zero", NULL};
  posix_spawn_file_actions_t fa;
  if (posix_spawn_file_actions_init(&fa) != 0) bench_die("posix_spawn_file_actions_init failed");
  posix_spawn_file_actions_adddup2(&fa, src[1], STDOUT_FILENO);
  pid_t head;
  int rc = posix_spawnp(&head, "head", &fa, NULL, head_argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (rc != 0) bench_die("cannot start head: %s", strerror(rc));
  close(src[1]);

  int64_t sent = splice_from_pipe(src[0], s, "sender");
  close(s);
  int ok = sent >= 0 && (uint64_t)sent == bytes;
  if (sent >= 0 && !ok)
    fprintf(stderr, "tcp_floor: sent %" PRId64 " bytes, expected %" PRIu64 "\n", sent, bytes);
  ok &= wait_ok(head, "head");
  ok &= wait_ok(rx, "the receiver");
  return ok ? 0 : 1;
}
