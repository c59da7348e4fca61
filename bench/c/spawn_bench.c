/* spawn_bench: runs one command line many times, `concurrency` at once, and
 * reports per-run latency and the overall rate as one JSON record.
 *
 * It is how the harness measures everything that is "a process": the local
 * floor (`sh -c true`), `ssh … true` plain and through a ControlMaster, and
 * scp, so that all peers share one timing method.
 *
 *   spawn_bench --case latency --subject floor --runs 1000 --concurrency 8 \
 *               [--warmup 10] [--count-stdout] [--expect-bytes N] \
 *               [--watch NAME=PID]… [--label TEXT] -- sh -c true
 *
 * --count-stdout reads the child's stdout through a pipe and counts the bytes
 * (the streaming case), otherwise stdout goes to /dev/null. A run is an error
 * when the child exits non-zero, dies, or (with --expect-bytes) delivers a
 * different byte count. The record's client RSS is the largest peak RSS of any
 * child (wait4 rusage), i.e. of the ssh/scp client, not of this program. */
#include "bench_common.h"

#include <fcntl.h>
#include <pthread.h>
#include <spawn.h>
#include <stdatomic.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

/* Read size for --count-stdout; the pipe itself is 64 KiB by default. */
#define READ_CHUNK (256 * 1024)

typedef struct {
  char **argv;
  int count_stdout;
  uint64_t expect_bytes; /* 0 = don't check */
  atomic_long remaining; /* runs left to start, shared by all workers */
  atomic_long errors;
  atomic_long max_child_rss_kb;
  int record; /* 0 during warm-up */
} job;

typedef struct {
  job *job;
  bench_samples samples;
  int first_error_reported;
} worker;

static void note_max(atomic_long *slot, long v) {
  long cur = atomic_load(slot);
  while (v > cur && !atomic_compare_exchange_weak(slot, &cur, v)) {
  }
}

/* Runs the command once; returns 0 on success, -1 on any failure. */
static int run_once(job *j, worker *w, char *buf) {
  int pipefd[2] = {-1, -1};
  posix_spawn_file_actions_t fa;
  if (posix_spawn_file_actions_init(&fa) != 0) return -1;
  if (j->count_stdout) {
    if (pipe2(pipefd, O_CLOEXEC) != 0) {
      posix_spawn_file_actions_destroy(&fa);
      return -1;
    }
    posix_spawn_file_actions_adddup2(&fa, pipefd[1], STDOUT_FILENO);
  } else {
    posix_spawn_file_actions_addopen(&fa, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  }
  posix_spawn_file_actions_addopen(&fa, STDIN_FILENO, "/dev/null", O_RDONLY, 0);

  pid_t pid;
  int rc = posix_spawnp(&pid, j->argv[0], &fa, NULL, j->argv, environ);
  posix_spawn_file_actions_destroy(&fa);
  if (pipefd[1] >= 0) close(pipefd[1]);
  if (rc != 0) {
    if (pipefd[0] >= 0) close(pipefd[0]);
    if (!w->first_error_reported) {
      fprintf(stderr, "spawn_bench: cannot start %s: %s\n", j->argv[0], strerror(rc));
      w->first_error_reported = 1;
    }
    return -1;
  }

  uint64_t got = 0;
  if (pipefd[0] >= 0) {
    for (;;) {
      ssize_t n = read(pipefd[0], buf, READ_CHUNK);
      if (n > 0) {
        got += (uint64_t)n;
      } else if (n == 0 || errno != EINTR) {
        break;
      }
    }
    close(pipefd[0]);
  }

  int status = 0;
  struct rusage ru;
  memset(&ru, 0, sizeof ru);
  while (wait4(pid, &status, 0, &ru) < 0) {
    if (errno != EINTR) return -1;
  }
  note_max(&j->max_child_rss_kb, ru.ru_maxrss);

  int ok = WIFEXITED(status) && WEXITSTATUS(status) == 0;
  if (ok && j->count_stdout && j->expect_bytes && got != j->expect_bytes) ok = 0;
  if (!ok && !w->first_error_reported) {
    fprintf(stderr, "spawn_bench: %s failed (status %d, %" PRIu64 " bytes on stdout)\n", j->argv[0],
            status, got);
    w->first_error_reported = 1;
  }
  return ok ? 0 : -1;
}

static void *worker_main(void *arg) {
  worker *w = arg;
  job *j = w->job;
  char *buf = j->count_stdout ? malloc(READ_CHUNK) : NULL;
  if (j->count_stdout && !buf) bench_die("out of memory for the read buffer");
  while (atomic_fetch_sub(&j->remaining, 1) > 0) {
    uint64_t t0 = bench_now_ns();
    int rc = run_once(j, w, buf);
    uint64_t t1 = bench_now_ns();
    if (!j->record) continue;
    if (rc != 0)
      atomic_fetch_add(&j->errors, 1);
    else
      bench_samples_push(&w->samples, (double)(t1 - t0) / 1000.0);
  }
  free(buf);
  return NULL;
}

/* Runs `runs` executions on `concurrency` threads; returns wall time in s. */
static double run_all(job *j, worker *workers, unsigned concurrency, long runs) {
  pthread_t tids[concurrency];
  atomic_store(&j->remaining, runs);
  uint64_t t0 = bench_now_ns();
  for (unsigned i = 0; i < concurrency; i++) {
    workers[i].job = j;
    int rc = pthread_create(&tids[i], NULL, worker_main, &workers[i]);
    if (rc != 0) bench_die("cannot start worker thread: %s", strerror(rc));
  }
  for (unsigned i = 0; i < concurrency; i++) pthread_join(tids[i], NULL);
  return (double)(bench_now_ns() - t0) / 1e9;
}

static void usage(void) {
  fputs("usage: spawn_bench --case NAME --subject ID [--label TEXT] [--runs N] [--warmup N]\n"
        "                   [--concurrency N] [--count-stdout] [--expect-bytes N]\n"
        "                   [--watch NAME=PID]... -- COMMAND [ARGS...]\n",
        stderr);
  exit(2);
}

int main(int argc, char **argv) {
  bench_record rec = {.case_name = NULL, .runs = 100, .concurrency = 1};
  bench_watch_list watch = {.len = 0};
  job j;
  memset(&j, 0, sizeof j);
  unsigned warmup = 5;

  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (strcmp(a, "--") == 0) {
      i++;
      break;
    } else if (strcmp(a, "--count-stdout") == 0) {
      j.count_stdout = 1;
      continue;
    }
    if (!v) usage();
    if (strcmp(a, "--case") == 0) rec.case_name = v;
    else if (strcmp(a, "--subject") == 0) rec.subject = v;
    else if (strcmp(a, "--label") == 0) rec.label = v;
    else if (strcmp(a, "--note") == 0) rec.note = v;
    else if (strcmp(a, "--runs") == 0) rec.runs = (unsigned)bench_parse_size(a, v);
    else if (strcmp(a, "--warmup") == 0) warmup = (unsigned)bench_parse_size(a, v);
    else if (strcmp(a, "--concurrency") == 0) rec.concurrency = (unsigned)bench_parse_size(a, v);
    else if (strcmp(a, "--expect-bytes") == 0) j.expect_bytes = bench_parse_size(a, v);
    else if (strcmp(a, "--watch") == 0) bench_watch_add(&watch, v);
    else usage();
    i++;
  }
  if (!rec.case_name || !rec.subject || i >= argc) usage();
  if (rec.runs == 0 || rec.concurrency == 0 || rec.concurrency > 1024)
    bench_die("--runs must be > 0 and --concurrency 1..1024");
  j.argv = &argv[i];

  worker *workers = calloc(rec.concurrency, sizeof *workers);
  if (!workers) bench_die("out of memory");

  if (warmup) {
    j.record = 0;
    run_all(&j, workers, rec.concurrency < warmup ? rec.concurrency : warmup, warmup);
  }
  bench_watch_reset(&watch);
  atomic_store(&j.max_child_rss_kb, 0);
  j.record = 1;
  rec.wall_s = run_all(&j, workers, rec.concurrency, rec.runs);

  bench_samples all = {0};
  for (unsigned k = 0; k < rec.concurrency; k++) bench_samples_move(&all, &workers[k].samples);
  rec.errors = (unsigned)atomic_load(&j.errors);
  rec.bytes = j.expect_bytes;
  rec.client_rss_kb = atomic_load(&j.max_child_rss_kb);
  rec.samples = &all;
  rec.watch = &watch;
  bench_record_print(&rec);
  free(all.us);
  free(workers);
  return rec.errors == rec.runs ? 1 : 0;
}
