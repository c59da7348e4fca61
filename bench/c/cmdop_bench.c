/* cmdop_bench: measures libcmdop through its C API against a running control
 * plane + agent, and prints one JSON record per measurement (format in
 * bench_common.h).
 *
 *   cmdop_bench MODE --server HOST:PORT --machine HOSTNAME --subject ID [options]
 *
 * Modes:
 *   exec       execute(--command, default "true") --runs times with
 *              --concurrency threads sharing one client (latency when 1,
 *              throughput otherwise)
 *   stream     execute("head -c --bytes /dev/zero") through the streaming
 *              call (cmdop_execute_with_callback_discard), counting bytes in the
 *              callback; reports peak RSS of this process and of every
 *              --watch NAME=PID
 *   files      write a --bytes buffer into --dir on the machine, then read it
 *              back; one record each, with the client's peak RSS of each
 *              call over its RSS just before it ("client_peak_over_kb")
 *   disk       cmdop_upload_file of a --bytes local file (made in
 *              --local-dir) into --dir on the machine, then
 *              cmdop_download_file back; records and peaks as in files
 *   coldstart  per run, in a fresh child process: create client + connect +
 *              set machine + first execute
 *   slowread   a slow reader: runs --command (default "yes") through the
 *              streaming call and reads its output at --rate bytes/s (the
 *              callback sleeps, so the library's bounded queue and the
 *              per-exec flow control hold the command back) for --seconds,
 *              then cancels it; writes --ready-file once output flows.
 *              Samples the VmRSS of every --watch NAME=PID every 100 ms
 *              (at the start, peak, at the end: "rss_sampled_kb")
 *
 * --ca FILE turns TLS on and trusts the CA certificate(s) in FILE (PEM), for
 * a control plane started with --tls-cert/--tls-key. In exec mode,
 * --duration-s S stops after S seconds (--runs is then an upper bound and the
 * record gives the runs done).
 *
 * --timeout-ms bounds each execute (default 60000); a call that runs into it
 * counts as an error. The API key comes from CMDOP_API_KEY. Everything the library returns is
 * checked: a failed call counts as an error and the first one is described on
 * stderr with the library's own message. */
#include "bench_common.h"

#include <pthread.h>
#include <stdbool.h>
#include <stdatomic.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cmdop.h"

/* How long a single execute may take before the run counts as failed,
 * unless --timeout-ms says otherwise. */
#define DEFAULT_EXEC_TIMEOUT_MS 60000u
static uint32_t exec_timeout_ms = DEFAULT_EXEC_TIMEOUT_MS;
/* How long to keep retrying set_machine while the agent's session comes up. */
#define MACHINE_WAIT_MS 20000u

typedef struct {
  const char *mode;
  const char *host;
  uint16_t port;
  const char *machine;
  const char *command;
  const char *dir;
  const char *local_dir;
  uint64_t bytes;
  unsigned warmup;
  const char *ca_path;
  double duration_s;
  uint64_t rate;
  double seconds;
  const char *ready_file;
  bench_record rec;
  bench_watch_list watch;
} options;

/* ------------------------------------------------------ library binding
 * Every libcmdop call the benchmark makes goes through these few functions,
 * so an API change touches only this block. */

static void report_failure(const char *what, cmdop_status st) {
  fprintf(stderr, "cmdop_bench: %s failed: %s: %s\n", what, cmdop_status_str(st),
          cmdop_last_error_message());
}

/* Creates a client, connects and selects the machine (retrying while the
 * agent's session comes up). Returns NULL after describing the failure. */
static cmdop_client *open_client(const options *o) {
  cmdop_client *client = NULL;
  cmdop_options opts;
  cmdop_status st = cmdop_options_init(&opts, CMDOP_OPTIONS_VERSION);
  if (st != CMDOP_STATUS_OK) {
    report_failure("cmdop_options_init", st);
    return NULL;
  }
  if (o->ca_path) {
    opts.tls = CMDOP_TLS_ON;
    opts.ca_pem_path = o->ca_path;
  }
  st = cmdop_local_new(o->host, o->port, NULL, &opts, &client);
  if (st != CMDOP_STATUS_OK) {
    report_failure("cmdop_local_new", st);
    return NULL;
  }
  st = cmdop_connect(client);
  if (st != CMDOP_STATUS_OK) {
    report_failure("cmdop_connect", st);
    cmdop_client_free(client);
    return NULL;
  }
  uint64_t deadline = bench_now_ns() + (uint64_t)MACHINE_WAIT_MS * 1000000u;
  for (;;) {
    st = cmdop_set_machine(client, o->machine);
    if (st == CMDOP_STATUS_OK) return client;
    if (bench_now_ns() > deadline) {
      report_failure("cmdop_set_machine", st);
      cmdop_client_free(client);
      return NULL;
    }
    usleep(100 * 1000);
  }
}

/* Runs `cmd` and succeeds only on OK with exit code 0. */
static bool exec_ok(cmdop_client *client, const char *cmd, bool describe) {
  cmdop_exec_result *res = NULL;
  cmdop_status st = cmdop_execute(client, cmd, exec_timeout_ms, &res);
  bool ok = st == CMDOP_STATUS_OK && res && cmdop_exec_result_exit_code(res) == 0;
  if (!ok && describe) {
    if (st != CMDOP_STATUS_OK)
      report_failure("cmdop_execute", st);
    else
      fprintf(stderr, "cmdop_bench: '%s' exited with %d\n", cmd,
              res ? (int)cmdop_exec_result_exit_code(res) : -1);
  }
  cmdop_exec_result_free(res);
  return ok;
}

typedef struct {
  uint64_t stdout_bytes;
} stream_count;

static void count_chunk(void *user_data, cmdop_stream_kind kind, const uint8_t *data, size_t len) {
  (void)data;
  stream_count *c = user_data;
  if (kind == CMDOP_STREAM_KIND_STDOUT) c->stdout_bytes += len;
}

/* Streams `cmd`'s output into `count_chunk`; OK only with exit code 0. The
 * result keeps no copy of the output (the callback is its only consumer),
 * as an application streaming gigabytes would do. */
static bool stream_ok(cmdop_client *client, const char *cmd, uint64_t *stdout_bytes) {
  stream_count count = {0};
  cmdop_exec_result *res = NULL;
  cmdop_status st =
      cmdop_execute_with_callback_discard(client, cmd, exec_timeout_ms, count_chunk, &count, NULL, NULL, &res);
  *stdout_bytes = count.stdout_bytes;
  if (st != CMDOP_STATUS_OK) {
    report_failure("cmdop_execute_with_callback_discard", st);
    cmdop_exec_result_free(res);
    return false;
  }
  int32_t exit_code = cmdop_exec_result_exit_code(res);
  cmdop_exec_result_free(res);
  if (exit_code != 0) fprintf(stderr, "cmdop_bench: '%s' exited with %d\n", cmd, (int)exit_code);
  return exit_code == 0;
}

static bool file_write_ok(cmdop_client *client, const char *path, const uint8_t *data, size_t len) {
  cmdop_status st = cmdop_write_file(client, path, data, len);
  if (st != CMDOP_STATUS_OK) report_failure("cmdop_write_file", st);
  return st == CMDOP_STATUS_OK;
}

static bool file_read_ok(cmdop_client *client, const char *path, uint64_t expect_len) {
  cmdop_bytes *content = NULL;
  cmdop_status st = cmdop_read_file(client, path, &content);
  if (st != CMDOP_STATUS_OK) {
    report_failure("cmdop_read_file", st);
    return false;
  }
  size_t len = cmdop_bytes_len(content);
  cmdop_bytes_free(content);
  if (len != expect_len) {
    fprintf(stderr, "cmdop_bench: read %zu bytes of %s, expected %" PRIu64 "\n", len, path,
            expect_len);
    return false;
  }
  return true;
}

/* ------------------------------------------------------------ exec mode */

typedef struct {
  cmdop_client *client;
  const char *command;
  atomic_long remaining;
  atomic_long errors;
  atomic_bool described;
  bool record;
  uint64_t deadline_ns; /* 0 = none: run until `remaining` is used up */
} exec_job;

typedef struct {
  exec_job *job;
  bench_samples samples;
} exec_worker;

static void *exec_worker_main(void *arg) {
  exec_worker *w = arg;
  exec_job *j = w->job;
  while (atomic_fetch_sub(&j->remaining, 1) > 0) {
    uint64_t t0 = bench_now_ns();
    if (j->record && j->deadline_ns && t0 >= j->deadline_ns) break;
    bool describe = !atomic_load(&j->described);
    bool ok = exec_ok(j->client, j->command, describe);
    uint64_t t1 = bench_now_ns();
    if (!ok) atomic_store(&j->described, true);
    if (!j->record) continue;
    if (ok)
      bench_samples_push(&w->samples, (double)(t1 - t0) / 1000.0);
    else
      atomic_fetch_add(&j->errors, 1);
  }
  return NULL;
}

static double exec_all(exec_job *j, exec_worker *workers, unsigned concurrency, long runs) {
  pthread_t tids[concurrency];
  atomic_store(&j->remaining, runs);
  uint64_t t0 = bench_now_ns();
  for (unsigned i = 0; i < concurrency; i++) {
    workers[i].job = j;
    int rc = pthread_create(&tids[i], NULL, exec_worker_main, &workers[i]);
    if (rc != 0) bench_die("cannot start worker thread: %s", strerror(rc));
  }
  for (unsigned i = 0; i < concurrency; i++) pthread_join(tids[i], NULL);
  return (double)(bench_now_ns() - t0) / 1e9;
}

static int mode_exec(options *o) {
  cmdop_client *client = open_client(o);
  if (!client) return 1;
  exec_job j = {.client = client, .command = o->command};
  unsigned conc = o->rec.concurrency;
  exec_worker *workers = calloc(conc, sizeof *workers);
  if (!workers) bench_die("out of memory");

  if (o->warmup) {
    j.record = false;
    exec_all(&j, workers, conc < o->warmup ? conc : o->warmup, o->warmup);
  }
  j.record = true;
  atomic_store(&j.errors, 0);
  if (o->duration_s > 0) j.deadline_ns = bench_now_ns() + (uint64_t)(o->duration_s * 1e9);
  o->rec.wall_s = exec_all(&j, workers, conc, o->rec.runs);

  bench_samples all = {0};
  for (unsigned k = 0; k < conc; k++) bench_samples_move(&all, &workers[k].samples);
  o->rec.errors = (unsigned)atomic_load(&j.errors);
  if (o->duration_s > 0) o->rec.runs = (unsigned)all.len + o->rec.errors;
  o->rec.client_rss_kb = bench_vm_hwm_kb(0);
  o->rec.samples = &all;
  o->rec.watch = &o->watch;
  bench_record_print(&o->rec);
  free(all.us);
  free(workers);
  cmdop_client_free(client);
  return o->rec.errors == o->rec.runs ? 1 : 0;
}

/* ---------------------------------------------------------- stream mode */

static int mode_stream(options *o) {
  cmdop_client *client = open_client(o);
  if (!client) return 1;
  char cmd[64];
  snprintf(cmd, sizeof cmd, "head -c %" PRIu64 " /dev/zero", o->bytes);
  uint64_t got = 0;
  for (unsigned i = 0; i < o->warmup; i++) (void)stream_ok(client, "head -c 65536 /dev/zero", &got);

  /* The peak RSS figures below belong to the streamed runs alone. */
  long self_pid = (long)getpid();
  bench_watch_list self = {.len = 0};
  char spec[48];
  snprintf(spec, sizeof spec, "client=%ld", self_pid);
  bench_watch_add(&self, spec);
  bench_watch_reset(&self);
  bench_watch_reset(&o->watch);

  bench_samples samples = {0};
  uint64_t t0 = bench_now_ns();
  for (unsigned i = 0; i < o->rec.runs; i++) {
    uint64_t s = bench_now_ns();
    bool ok = stream_ok(client, cmd, &got);
    uint64_t e = bench_now_ns();
    if (ok && got == o->bytes) {
      bench_samples_push(&samples, (double)(e - s) / 1000.0);
    } else {
      if (ok)
        fprintf(stderr, "cmdop_bench: streamed %" PRIu64 " bytes, expected %" PRIu64 "\n", got,
                o->bytes);
      o->rec.errors++;
    }
  }
  o->rec.wall_s = (double)(bench_now_ns() - t0) / 1e9;
  o->rec.bytes = o->bytes;
  o->rec.client_rss_kb = bench_vm_hwm_kb(0);
  o->rec.samples = &samples;
  o->rec.watch = &o->watch;
  bench_record_print(&o->rec);
  free(samples.us);
  cmdop_client_free(client);
  return o->rec.errors == o->rec.runs ? 1 : 0;
}

/* ----------------------------------------------------------- files mode */

/* Resets this process's peak-RSS counter (clear_refs "5") so that VmHWM
 * afterwards is the peak of what runs next; false if the kernel refused. */
static bool reset_own_peak(void) {
  FILE *f = fopen("/proc/self/clear_refs", "w");
  if (!f) return false;
  bool ok = fputs("5", f) >= 0;
  return fclose(f) == 0 && ok;
}

/* Per-call client memory: what one call added to this process's resident
 * set at its peak, over the resident set just before it (which already holds
 * the caller's buffer for a write). One sample per call, in KiB. */
typedef struct {
  bench_samples over_kb;
  long before_kb;
  bool exact; /* every reset worked: the samples are per call */
} call_peaks;

static void call_peak_begin(call_peaks *p) {
  p->before_kb = bench_vm_rss_kb(0);
  if (!reset_own_peak()) p->exact = false;
}

static void call_peak_end(call_peaks *p) {
  long peak = bench_vm_hwm_kb(0);
  if (peak >= 0 && p->before_kb >= 0) bench_samples_push(&p->over_kb, (double)(peak - p->before_kb));
}

/* The record member with a call's peaks: "client_peak_over_kb":[…] and
 * whether they are per call; "" when there are none. Caller frees. */
static char *call_peaks_json(const call_peaks *p) {
  size_t cap = 96 + p->over_kb.len * 24, at = 0;
  char *out = malloc(cap);
  if (!out) bench_die("out of memory");
  at += (size_t)snprintf(out + at, cap - at, "\"client_peak_per_call\":%s,\"client_peak_over_kb\":[",
                         p->exact ? "true" : "false");
  for (size_t i = 0; i < p->over_kb.len; i++)
    at += (size_t)snprintf(out + at, cap - at, "%s%.0f", i ? "," : "", p->over_kb.us[i]);
  snprintf(out + at, cap - at, "]");
  return out;
}

/* Prints one record of a files-type mode: `suffix` goes after the label,
 * `peaks` become its client_peak_over_kb and its client RSS the largest of
 * them over the starting resident set. */
static void print_call_record(const options *o, const char *case_name, const char *suffix,
                              const bench_samples *samples, unsigned errors, double wall_s,
                              const call_peaks *peaks) {
  char label[256];
  snprintf(label, sizeof label, "%s %s", o->rec.label ? o->rec.label : o->rec.subject, suffix);
  bench_record r = o->rec;
  r.label = label;
  r.case_name = case_name;
  r.bytes = o->bytes;
  r.samples = samples;
  r.errors = errors;
  r.wall_s = wall_s;
  r.watch = &o->watch;
  double max_over = 0;
  for (size_t i = 0; i < peaks->over_kb.len; i++)
    if (peaks->over_kb.us[i] > max_over) max_over = peaks->over_kb.us[i];
  r.client_rss_kb = peaks->over_kb.len ? peaks->before_kb + (long)max_over : bench_vm_hwm_kb(0);
  char *extra = call_peaks_json(peaks);
  r.extra_json = extra;
  bench_record_print(&r);
  free(extra);
}

static int mode_files(options *o) {
  if (!o->dir) bench_die("files mode needs --dir DIR (a directory on the machine)");
  if (o->bytes > SIZE_MAX) bench_die("--bytes too large for this platform");
  cmdop_client *client = open_client(o);
  if (!client) return 1;
  size_t len = (size_t)o->bytes;
  uint8_t *data = malloc(len ? len : 1);
  if (!data) bench_die("cannot allocate %zu bytes of file content", len);
  /* Not all zeros, so no layer can shortcut the content. */
  for (size_t i = 0; i < len; i++) data[i] = (uint8_t)(i * 2654435761u >> 24);

  char path[4096];
  int n = snprintf(path, sizeof path, "%s/cmdop-bench.bin", o->dir);
  if (n < 0 || (size_t)n >= sizeof path) bench_die("--dir is too long");

  bench_samples wr = {0}, rd = {0};
  call_peaks wr_peak = {.exact = true}, rd_peak = {.exact = true};
  unsigned wr_err = 0, rd_err = 0;
  double wr_wall = 0, rd_wall = 0;
  for (unsigned i = 0; i < o->rec.runs; i++) {
    call_peak_begin(&wr_peak);
    uint64_t t0 = bench_now_ns();
    bool ok = file_write_ok(client, path, data, len);
    uint64_t t1 = bench_now_ns();
    call_peak_end(&wr_peak);
    wr_wall += (double)(t1 - t0) / 1e9;
    if (ok) bench_samples_push(&wr, (double)(t1 - t0) / 1000.0);
    else wr_err++;

    /* The read's result (the whole file, by design of cmdop_read_file) is
     * freed inside file_read_ok, so its peak is the file plus overhead. */
    call_peak_begin(&rd_peak);
    t0 = bench_now_ns();
    ok = file_read_ok(client, path, o->bytes);
    t1 = bench_now_ns();
    call_peak_end(&rd_peak);
    rd_wall += (double)(t1 - t0) / 1e9;
    if (ok) bench_samples_push(&rd, (double)(t1 - t0) / 1000.0);
    else rd_err++;
  }

  print_call_record(o, "file-write", "write", &wr, wr_err, wr_wall, &wr_peak);
  print_call_record(o, "file-read", "read", &rd, rd_err, rd_wall, &rd_peak);

  free(wr.us);
  free(rd.us);
  free(wr_peak.over_kb.us);
  free(rd_peak.over_kb.us);
  free(data);
  cmdop_client_free(client);
  return (wr_err == o->rec.runs || rd_err == o->rec.runs) ? 1 : 0;
}

/* ------------------------------------------------------------ disk mode */

/* Writes `bytes` of a fixed, non-zero pattern to `path` in 1 MiB blocks. */
static void make_local_file(const char *path, uint64_t bytes) {
  FILE *f = fopen(path, "wb");
  if (!f) bench_die("cannot create %s: %s", path, strerror(errno));
  enum { BLOCK = 1 << 20 };
  static uint8_t block[BLOCK];
  for (size_t i = 0; i < BLOCK; i++) block[i] = (uint8_t)(i * 2654435761u >> 24);
  for (uint64_t left = bytes; left > 0;) {
    size_t n = left < BLOCK ? (size_t)left : BLOCK;
    block[0]++; /* each block differs */
    if (fwrite(block, 1, n, f) != n) bench_die("cannot write %s: %s", path, strerror(errno));
    left -= n;
  }
  if (fclose(f) != 0) bench_die("cannot write %s: %s", path, strerror(errno));
}

static uint64_t local_size(const char *path) {
  struct stat st;
  return stat(path, &st) == 0 ? (uint64_t)st.st_size : UINT64_MAX;
}

/* Uploads a --bytes local file (made in --local-dir) to --dir on the machine
 * with cmdop_upload_file and downloads it back with cmdop_download_file;
 * one record each, with the client's peak RSS per call. */
static int mode_disk(options *o) {
  if (!o->dir || !o->local_dir) bench_die("disk mode needs --dir DIR (on the machine) and --local-dir DIR");
  cmdop_client *client = open_client(o);
  if (!client) return 1;
  char src[4096], back[4096], remote[4096];
  if (snprintf(src, sizeof src, "%s/cmdop-disk-src.bin", o->local_dir) >= (int)sizeof src ||
      snprintf(back, sizeof back, "%s/cmdop-disk-back.bin", o->local_dir) >= (int)sizeof back ||
      snprintf(remote, sizeof remote, "%s/cmdop-disk.bin", o->dir) >= (int)sizeof remote)
    bench_die("--dir or --local-dir is too long");
  make_local_file(src, o->bytes);

  bench_samples up = {0}, down = {0};
  call_peaks up_peak = {.exact = true}, down_peak = {.exact = true};
  unsigned up_err = 0, down_err = 0;
  double up_wall = 0, down_wall = 0;
  for (unsigned i = 0; i < o->rec.runs; i++) {
    call_peak_begin(&up_peak);
    uint64_t t0 = bench_now_ns();
    cmdop_status st = cmdop_upload_file(client, src, remote, NULL, NULL, NULL, NULL);
    uint64_t t1 = bench_now_ns();
    call_peak_end(&up_peak);
    up_wall += (double)(t1 - t0) / 1e9;
    if (st == CMDOP_STATUS_OK) bench_samples_push(&up, (double)(t1 - t0) / 1000.0);
    else {
      report_failure("cmdop_upload_file", st);
      up_err++;
    }

    call_peak_begin(&down_peak);
    t0 = bench_now_ns();
    st = cmdop_download_file(client, remote, back, NULL, NULL, NULL, NULL);
    t1 = bench_now_ns();
    call_peak_end(&down_peak);
    down_wall += (double)(t1 - t0) / 1e9;
    if (st != CMDOP_STATUS_OK) {
      report_failure("cmdop_download_file", st);
      down_err++;
    } else if (local_size(back) != o->bytes) {
      fprintf(stderr, "cmdop_bench: downloaded %" PRIu64 " bytes, expected %" PRIu64 "\n", local_size(back),
              o->bytes);
      down_err++;
    } else {
      bench_samples_push(&down, (double)(t1 - t0) / 1000.0);
    }
    unlink(back);
  }
  unlink(src);

  print_call_record(o, "disk-upload", "upload from disk", &up, up_err, up_wall, &up_peak);
  print_call_record(o, "disk-download", "download to disk", &down, down_err, down_wall, &down_peak);

  free(up.us);
  free(down.us);
  free(up_peak.over_kb.us);
  free(down_peak.over_kb.us);
  cmdop_client_free(client);
  return (up_err == o->rec.runs || down_err == o->rec.runs) ? 1 : 0;
}

/* -------------------------------------------------------- slowread mode */

typedef struct {
  uint64_t rate;     /* bytes per second the reader allows itself */
  uint64_t t0_ns;    /* when the first byte arrived (0 = not yet) */
  atomic_ullong bytes;
  atomic_bool released; /* the library is done with this reader */
} slow_reader;

static void slow_release(void *user_data) {
  slow_reader *r = user_data;
  atomic_store(&r->released, true);
}

/* Takes a chunk, then sleeps until reading it fits the rate: the callback is
 * the only consumer, so while it sleeps the library's queue fills and the
 * command is held back by flow control. */
static void slow_chunk(void *user_data, cmdop_stream_kind kind, const uint8_t *data, size_t len) {
  (void)data;
  (void)kind;
  slow_reader *r = user_data;
  uint64_t now = bench_now_ns();
  if (r->t0_ns == 0) r->t0_ns = now;
  uint64_t total = atomic_fetch_add(&r->bytes, len) + len;
  uint64_t due = r->t0_ns + (uint64_t)((double)total / (double)r->rate * 1e9);
  while (now < due) {
    uint64_t ns = due - now;
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u), .tv_nsec = (long)(ns % 1000000000u)};
    nanosleep(&ts, NULL);
    now = bench_now_ns();
  }
}

typedef struct {
  cmdop_client *client;
  const char *command;
  slow_reader *reader;
  cmdop_cancel_token *cancel;
  cmdop_status status;
  atomic_bool done;
} slow_call;

static void *slow_call_main(void *arg) {
  slow_call *c = arg;
  cmdop_exec_result *res = NULL;
  /* The cancel below ends it; the timeout only bounds a harness gone wrong. */
  c->status = cmdop_execute_with_callback_discard(c->client, c->command, exec_timeout_ms, slow_chunk,
                                                  c->reader, slow_release, c->cancel, &res);
  cmdop_exec_result_free(res);
  atomic_store(&c->done, true);
  return NULL;
}

/* Per watched process: VmRSS at the start, the largest sample, the last. */
typedef struct {
  long start, peak, end;
} rss_track;

static void rss_sample(const bench_watch_list *w, rss_track *t, bool first) {
  for (size_t i = 0; i < w->len; i++) {
    long kb = bench_vm_rss_kb(w->items[i].pid);
    if (first) t[i].start = t[i].peak = kb;
    if (kb > t[i].peak) t[i].peak = kb;
    t[i].end = kb;
  }
}

static int mode_slowread(options *o) {
  if (o->rate == 0 || o->seconds <= 0) bench_die("slowread mode needs --rate N[K|M] and --seconds S");
  cmdop_client *client = open_client(o);
  if (!client) return 1;
  slow_reader reader = {.rate = o->rate};
  atomic_store(&reader.bytes, 0);
  atomic_store(&reader.released, false);
  slow_call call = {.client = client, .command = o->command, .reader = &reader};
  call.cancel = cmdop_cancel_token_new();
  if (!call.cancel) bench_die("cmdop_cancel_token_new failed");
  atomic_store(&call.done, false);

  rss_track track[BENCH_MAX_WATCHED];
  bench_watch_reset(&o->watch);
  rss_sample(&o->watch, track, true);
  pthread_t tid;
  int rc = pthread_create(&tid, NULL, slow_call_main, &call);
  if (rc != 0) bench_die("cannot start the reading thread: %s", strerror(rc));

  /* Wait for the output to flow (at most 20 s), then say so. */
  uint64_t start_deadline = bench_now_ns() + 20000000000ull;
  while (atomic_load(&reader.bytes) == 0 && !atomic_load(&call.done) && bench_now_ns() < start_deadline)
    usleep(10 * 1000);
  bool flowing = atomic_load(&reader.bytes) > 0 && !atomic_load(&call.done);
  if (flowing && o->ready_file) {
    FILE *f = fopen(o->ready_file, "w");
    if (!f) bench_die("cannot write --ready-file %s: %s", o->ready_file, strerror(errno));
    fputs("reading\n", f);
    fclose(f);
  }
  uint64_t t0 = bench_now_ns();
  uint64_t end = t0 + (uint64_t)(o->seconds * 1e9);
  while (flowing && !atomic_load(&call.done) && bench_now_ns() < end) {
    usleep(100 * 1000);
    rss_sample(&o->watch, track, false);
  }
  bool ended_early = atomic_load(&call.done);
  cmdop_cancel_token_cancel(call.cancel);
  pthread_join(tid, NULL);
  /* A callback still sleeping when the cancel came finishes on its own. */
  for (int i = 0; i < 500 && !atomic_load(&reader.released); i++) usleep(10 * 1000);
  if (!atomic_load(&reader.released)) bench_die("the reader callback did not finish within 5 s of the cancel");
  double wall = (double)(bench_now_ns() - t0) / 1e9;
  rss_sample(&o->watch, track, false);
  uint64_t got = atomic_load(&reader.bytes);

  bool ok = flowing && !ended_early && call.status == CMDOP_STATUS_CANCELLED;
  if (!ok) {
    if (!flowing)
      fprintf(stderr, "cmdop_bench: '%s' printed nothing within 20 s\n", o->command);
    if (call.status != CMDOP_STATUS_CANCELLED)
      report_failure("cmdop_execute_with_callback_discard (expected CANCELLED)", call.status);
  }

  char extra[1024];
  size_t n = 0;
  n += (size_t)snprintf(extra + n, sizeof extra - n, "\"rate_limit_bytes_per_s\":%" PRIu64
                        ",\"read_bytes_per_s\":%.0f,\"rss_sampled_kb\":{",
                        o->rate, wall > 0 ? (double)got / wall : 0.0);
  for (size_t i = 0; i < o->watch.len && n < sizeof extra; i++)
    n += (size_t)snprintf(extra + n, sizeof extra - n, "%s\"%s\":{\"start\":%ld,\"peak\":%ld,\"end\":%ld}",
                          i ? "," : "", o->watch.items[i].name, track[i].start, track[i].peak,
                          track[i].end);
  if (n < sizeof extra) snprintf(extra + n, sizeof extra - n, "}");
  else bench_die("too many --watch entries for the record");

  bench_samples none = {0};
  o->rec.runs = 1;
  o->rec.errors = ok ? 0 : 1;
  o->rec.wall_s = wall;
  o->rec.bytes = got;
  o->rec.client_rss_kb = bench_vm_hwm_kb(0);
  o->rec.samples = &none;
  o->rec.watch = &o->watch;
  o->rec.extra_json = extra;
  bench_record_print(&o->rec);
  cmdop_cancel_token_free(call.cancel);
  cmdop_client_free(client);
  return ok ? 0 : 1;
}

/* ------------------------------------------------------- coldstart mode */

/* In a child: one cold start, result (ns, 0 on failure) written to `fd`. */
static void coldstart_child(const options *o, int fd) {
  uint64_t t0 = bench_now_ns();
  cmdop_client *client = open_client(o);
  bool ok = client && exec_ok(client, o->command, true);
  uint64_t elapsed = ok ? bench_now_ns() - t0 : 0;
  if (write(fd, &elapsed, sizeof elapsed) != (ssize_t)sizeof elapsed) _exit(3);
  cmdop_client_free(client);
  _exit(ok ? 0 : 1);
}

static int mode_coldstart(options *o) {
  bench_samples samples = {0};
  uint64_t t0 = bench_now_ns();
  for (unsigned i = 0; i < o->warmup + o->rec.runs; i++) {
    int fds[2];
    if (pipe(fds) != 0) bench_die("pipe: %s", strerror(errno));
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) bench_die("fork: %s", strerror(errno));
    if (pid == 0) {
      close(fds[0]);
      coldstart_child(o, fds[1]);
    }
    close(fds[1]);
    uint64_t ns = 0;
    ssize_t got = read(fds[0], &ns, sizeof ns);
    close(fds[0]);
    int status;
    while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
    }
    if (i < o->warmup) continue;
    if (got == (ssize_t)sizeof ns && ns > 0)
      bench_samples_push(&samples, (double)ns / 1000.0);
    else
      o->rec.errors++;
  }
  o->rec.wall_s = (double)(bench_now_ns() - t0) / 1e9;
  o->rec.samples = &samples;
  o->rec.client_rss_kb = -1;
  o->rec.watch = &o->watch;
  bench_record_print(&o->rec);
  free(samples.us);
  return o->rec.errors == o->rec.runs ? 1 : 0;
}

/* ------------------------------------------------------------------ main */

static void usage(void) {
  fputs("usage: cmdop_bench exec|stream|files|disk|coldstart|slowread --server HOST:PORT --machine HOSTNAME\n"
        "         --subject ID [--case NAME] [--label TEXT] [--note TEXT] [--runs N] [--warmup N]\n"
        "         [--concurrency N] [--command CMD] [--bytes N[K|M|G]] [--dir DIR] [--local-dir DIR]\n"
        "         [--timeout-ms N] [--watch NAME=PID]... [--ca FILE] [--duration-s S]\n"
        "         [--rate N[K|M|G]] [--seconds S] [--ready-file FILE]\n"
        "The API key is read from CMDOP_API_KEY.\n",
        stderr);
  exit(2);
}

static double parse_seconds(const char *what, const char *v) {
  char *end = NULL;
  errno = 0;
  double d = strtod(v, &end);
  if (errno != 0 || end == v || *end != '\0' || !(d > 0) || d > 86400)
    bench_die("%s wants seconds (0 < S <= 86400), got '%s'", what, v);
  return d;
}

static void parse_server(options *o, const char *v) {
  const char *colon = strrchr(v, ':');
  if (!colon || colon == v) bench_die("--server wants HOST:PORT, got '%s'", v);
  uint64_t port = bench_parse_size("--server port", colon + 1);
  if (port == 0 || port > 65535) bench_die("--server port out of range in '%s'", v);
  char *host = strndup(v, (size_t)(colon - v));
  if (!host) bench_die("out of memory");
  o->host = host;
  o->port = (uint16_t)port;
}

int main(int argc, char **argv) {
  if (argc < 2) usage();
  options o = {.mode = argv[1], .warmup = 5};
  o.rec.runs = 100;
  o.rec.concurrency = 1;
  for (int i = 2; i < argc; i += 2) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) usage();
    if (strcmp(a, "--server") == 0) parse_server(&o, v);
    else if (strcmp(a, "--machine") == 0) o.machine = v;
    else if (strcmp(a, "--case") == 0) o.rec.case_name = v;
    else if (strcmp(a, "--subject") == 0) o.rec.subject = v;
    else if (strcmp(a, "--label") == 0) o.rec.label = v;
    else if (strcmp(a, "--note") == 0) o.rec.note = v;
    else if (strcmp(a, "--runs") == 0) o.rec.runs = (unsigned)bench_parse_size(a, v);
    else if (strcmp(a, "--warmup") == 0) o.warmup = (unsigned)bench_parse_size(a, v);
    else if (strcmp(a, "--concurrency") == 0) o.rec.concurrency = (unsigned)bench_parse_size(a, v);
    else if (strcmp(a, "--command") == 0) o.command = v;
    else if (strcmp(a, "--bytes") == 0) o.bytes = bench_parse_size(a, v);
    else if (strcmp(a, "--dir") == 0) o.dir = v;
    else if (strcmp(a, "--local-dir") == 0) o.local_dir = v;
    else if (strcmp(a, "--timeout-ms") == 0) {
      uint64_t t = bench_parse_size(a, v);
      if (t == 0 || t > UINT32_MAX) bench_die("--timeout-ms must be 1..%u", UINT32_MAX);
      exec_timeout_ms = (uint32_t)t;
    }
    else if (strcmp(a, "--watch") == 0) bench_watch_add(&o.watch, v);
    else if (strcmp(a, "--ca") == 0) o.ca_path = v;
    else if (strcmp(a, "--duration-s") == 0) o.duration_s = parse_seconds(a, v);
    else if (strcmp(a, "--seconds") == 0) o.seconds = parse_seconds(a, v);
    else if (strcmp(a, "--rate") == 0) o.rate = bench_parse_size(a, v);
    else if (strcmp(a, "--ready-file") == 0) o.ready_file = v;
    else usage();
  }
  if (!o.host || !o.machine || !o.rec.subject) usage();
  if (o.rec.runs == 0 || o.rec.concurrency == 0 || o.rec.concurrency > 1024)
    bench_die("--runs must be > 0 and --concurrency 1..1024");
  if (!getenv("CMDOP_API_KEY")) bench_die("set CMDOP_API_KEY to the control plane's API key");
  if (!o.command && strcmp(o.mode, "slowread") != 0) o.command = "true";

  if (strcmp(o.mode, "exec") == 0) {
    if (!o.rec.case_name) o.rec.case_name = o.rec.concurrency == 1 ? "latency" : "throughput";
    return mode_exec(&o);
  }
  if (strcmp(o.mode, "stream") == 0) {
    if (!o.rec.case_name) o.rec.case_name = "stream";
    if (o.bytes == 0) bench_die("stream mode needs --bytes N");
    return mode_stream(&o);
  }
  if (strcmp(o.mode, "files") == 0) {
    o.rec.case_name = "files";
    return mode_files(&o);
  }
  if (strcmp(o.mode, "disk") == 0) {
    o.rec.case_name = "disk";
    return mode_disk(&o);
  }
  if (strcmp(o.mode, "slowread") == 0) {
    if (!o.rec.case_name) o.rec.case_name = "hol";
    if (!o.command) o.command = "yes";
    return mode_slowread(&o);
  }
  if (strcmp(o.mode, "coldstart") == 0) {
    if (!o.rec.case_name) o.rec.case_name = "coldstart";
    return mode_coldstart(&o);
  }
  usage();
}
