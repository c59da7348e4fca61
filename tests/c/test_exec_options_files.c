/*
 * Execute with options (stdin bytes, environment, working directory,
 * versioned options struct), stdin streamed from another thread, and
 * files to and from disk (progress, mode bits, cancel, streaming read).
 * Runs on the native stack (`cmdop dev`), whose agent is this machine.
 */
#include "check.h"

#include <pthread.h>
#include <sys/stat.h>
#include <sys/types.h>

static char dir[] = "/tmp/cmdop-ctest-xfer-XXXXXX";

static void on_output(void *user_data, cmdop_stream_kind kind, const uint8_t *data, size_t len) {
  size_t *seen = user_data;
  (void)kind;
  (void)data;
  *seen += len;
}

static void exec_options(cmdop_client *c) {
  cmdop_exec_options o;
  cmdop_exec_result *r = NULL;
  const char *env[] = {"CMDOP_C1=one", "CMDOP_C2=two words"};
  const uint8_t *out;
  size_t len = 0, seen = 0;
  char want[600];

  CHECK_STATUS(cmdop_exec_options_init(&o, 0), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cmdop_exec_options_init(&o, CMDOP_EXEC_OPTIONS_VERSION + 1),
               CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cmdop_exec_options_init(NULL, CMDOP_EXEC_OPTIONS_VERSION),
               CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_OK(cmdop_exec_options_init(&o, CMDOP_EXEC_OPTIONS_VERSION));
  o.stdin_data = (const uint8_t *)"a\nb\nc\n";
  o.stdin_len = 6;
  o.env = env;
  o.env_count = 2;
  o.working_directory = dir;
  CHECK_OK(cmdop_execute_with_options(
      c, "wc -l | tr -d ' '; printf '%s|%s|' \"$CMDOP_C1\" \"$CMDOP_C2\"; pwd", &o, on_output,
      &seen, NULL, NULL, &r));
  CHECK(r != NULL);
  if (r) {
    out = cmdop_exec_result_stdout(r, &len);
    snprintf(want, sizeof want, "3\none|two words|%s\n", dir);
    CHECK_BYTES(out, len, want, strlen(want));
    CHECK(seen == len);
    CHECK(cmdop_exec_result_exit_code(r) == 0);
    cmdop_exec_result_free(r);
    r = NULL;
  }

  /* Malformed options are refused before anything runs. */
  env[1] = "=nope";
  CHECK_STATUS(cmdop_execute_with_options(c, "true", &o, NULL, NULL, NULL, NULL, &r),
               CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(r == NULL);
  o.env_count = 0;
  o.stdin_len = 3;
  o.stdin_data = NULL;
  CHECK_STATUS(cmdop_execute_with_options(c, "true", &o, NULL, NULL, NULL, NULL, &r),
               CMDOP_STATUS_INVALID_ARGUMENT);
  o.version = 99;
  CHECK_STATUS(cmdop_execute_with_options(c, "true", &o, NULL, NULL, NULL, NULL, &r),
               CMDOP_STATUS_INVALID_ARGUMENT);
  /* A bool byte that is neither 0 nor 1, as C can write: refused, never
   * read as a bool (UBSan would flag it). */
  CHECK_OK(cmdop_exec_options_init(&o, CMDOP_EXEC_OPTIONS_VERSION));
  memset(&o.discard_output, 7, 1);
  CHECK_STATUS(cmdop_execute_with_options(c, "true", &o, NULL, NULL, NULL, NULL, &r),
               CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("discard_output");
  CHECK(r == NULL);

  /* NULL options: the defaults. A missing directory: OPERATION_FAILED. */
  CHECK_OK(cmdop_execute_with_options(c, "echo hi", NULL, NULL, NULL, NULL, NULL, &r));
  cmdop_exec_result_free(r);
  r = NULL;
  CHECK_OK(cmdop_exec_options_init(&o, CMDOP_EXEC_OPTIONS_VERSION));
  o.working_directory = "/nonexistent/cmdop-ctest";
  CHECK_STATUS(cmdop_execute_with_options(c, "true", &o, NULL, NULL, NULL, NULL, &r),
               CMDOP_STATUS_OPERATION_FAILED);
  CHECK(r == NULL);
}

struct feeder {
  cmdop_exec_stdin *in;
  size_t total;
  cmdop_status last;
};

static void *feed(void *arg) {
  struct feeder *f = arg;
  static uint8_t block[65536];
  size_t sent = 0, i;
  for (i = 0; i < sizeof block; i++) block[i] = (uint8_t)(i % 251);
  while (sent < f->total) {
    size_t n = f->total - sent < sizeof block ? f->total - sent : sizeof block;
    f->last = cmdop_exec_stdin_write(f->in, block, n);
    if (f->last != CMDOP_STATUS_OK) return NULL;
    sent += n;
  }
  f->last = cmdop_exec_stdin_close(f->in);
  return NULL;
}

static void streamed_stdin(cmdop_client *c) {
  struct feeder f;
  pthread_t t;
  cmdop_exec_result *r = NULL;
  char cmd[600], path[512];
  struct stat st;

  CHECK_OK(cmdop_exec_stdin_new(&f.in));
  f.total = 5u * 1024 * 1024 + 17;
  f.last = CMDOP_STATUS_OK;
  CHECK(pthread_create(&t, NULL, feed, &f) == 0);
  snprintf(path, sizeof path, "%s/fed.bin", dir);
  snprintf(cmd, sizeof cmd, "cat > '%s'", path);
  CHECK_OK(cmdop_execute_with_stdin(c, cmd, NULL, f.in, NULL, NULL, NULL, NULL, &r));
  pthread_join(t, NULL);
  CHECK(f.last == CMDOP_STATUS_OK);
  CHECK(stat(path, &st) == 0 && (size_t)st.st_size == f.total);
  cmdop_exec_result_free(r);
  r = NULL;
  /* One command per stdin. */
  CHECK_STATUS(cmdop_execute_with_stdin(c, "cat", NULL, f.in, NULL, NULL, NULL, NULL, &r),
               CMDOP_STATUS_INVALID_ARGUMENT);
  /* Its execute returned: every later write fails. */
  CHECK_STATUS(cmdop_exec_stdin_write(f.in, (const uint8_t *)"x", 1),
               CMDOP_STATUS_OPERATION_FAILED);
  cmdop_exec_stdin_free(f.in);
  cmdop_exec_stdin_free(NULL);
  CHECK_STATUS(cmdop_exec_stdin_new(NULL), CMDOP_STATUS_INVALID_ARGUMENT);
}

struct progress {
  uint64_t calls, last_done, total;
  cmdop_cancel_token *cancel_at_half;
};

static void on_progress(void *user_data, uint64_t done, uint64_t total) {
  struct progress *p = user_data;
  p->calls++;
  p->last_done = done;
  p->total = total;
  if (p->cancel_at_half != NULL && done >= total / 2 && done < total)
    cmdop_cancel_token_cancel(p->cancel_at_half);
}

static void on_chunk(void *user_data, const uint8_t *data, size_t len) {
  uint64_t *sum = user_data;
  size_t i;
  for (i = 0; i < len; i++) *sum += data[i];
}

static void files_on_disk(cmdop_client *c) {
  char src[512], remote[512], back[512];
  cmdop_transfer_options o;
  struct progress p;
  struct stat st;
  FILE *f;
  size_t i, size = 3u * 1024 * 1024 + 5;
  uint64_t want_sum = 0, sum = 0, n = 0;

  snprintf(src, sizeof src, "%s/src.bin", dir);
  snprintf(remote, sizeof remote, "%s/deep/remote.bin", dir);
  snprintf(back, sizeof back, "%s/back.bin", dir);
  f = fopen(src, "wb");
  if (f == NULL) { perror(src); exit(1); }
  for (i = 0; i < size; i++) {
    fputc((int)(i * 31 % 256), f);
    want_sum += (uint64_t)(i * 31 % 256);
  }
  fclose(f);
  chmod(src, 0751);

  CHECK_STATUS(cmdop_transfer_options_init(&o, 7), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_OK(cmdop_transfer_options_init(&o, CMDOP_TRANSFER_OPTIONS_VERSION));
  o.keep_mode = true;
  o.create_parents = true;
  memset(&p, 0, sizeof p);
  CHECK_OK(cmdop_upload_file(c, src, remote, &o, on_progress, &p, NULL));
  CHECK(p.calls >= 2 && p.last_done == size && p.total == size);
  CHECK(stat(remote, &st) == 0 && (size_t)st.st_size == size && (st.st_mode & 07777) == 0751);

  memset(&p, 0, sizeof p);
  CHECK_OK(cmdop_download_file(c, remote, back, &o, on_progress, &p, NULL));
  CHECK(p.last_done == size && p.total == size);
  CHECK(stat(back, &st) == 0 && (size_t)st.st_size == size && (st.st_mode & 07777) == 0751);

  CHECK_OK(cmdop_read_file_with_callback(c, remote, on_chunk, &sum, NULL, &n));
  CHECK(n == size);
  CHECK(sum == want_sum);

  /* Cancelled halfway: CANCELLED, and the target is not created. */
  remove(back);
  memset(&p, 0, sizeof p);
  p.cancel_at_half = cmdop_cancel_token_new();
  CHECK_STATUS(cmdop_download_file(c, remote, back, NULL, on_progress, &p, p.cancel_at_half),
               CMDOP_STATUS_CANCELLED);
  CHECK(stat(back, &st) != 0);
  cmdop_cancel_token_free(p.cancel_at_half);

  /* A bool byte that is neither 0 nor 1 is refused. */
  CHECK_OK(cmdop_transfer_options_init(&o, CMDOP_TRANSFER_OPTIONS_VERSION));
  memset(&o.keep_mode, 7, 1);
  CHECK_STATUS(cmdop_download_file(c, remote, back, &o, NULL, NULL, NULL),
               CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("keep_mode");

  /* no_clobber, missing files, bad arguments. */
  CHECK_OK(cmdop_transfer_options_init(&o, CMDOP_TRANSFER_OPTIONS_VERSION));
  o.no_clobber = true;
  CHECK_STATUS(cmdop_upload_file(c, src, remote, &o, NULL, NULL, NULL),
               CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("already exists");
  CHECK_STATUS(cmdop_download_file(c, remote, src, &o, NULL, NULL, NULL),
               CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("already exists");
  CHECK_STATUS(cmdop_download_file(c, "/nonexistent/cmdop-ctest", back, NULL, NULL, NULL, NULL),
               CMDOP_STATUS_NOT_FOUND);
  CHECK(stat(back, &st) != 0);
  CHECK_STATUS(cmdop_download_file(c, NULL, back, NULL, NULL, NULL, NULL),
               CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cmdop_read_file_with_callback(c, remote, NULL, NULL, NULL, NULL),
               CMDOP_STATUS_INVALID_ARGUMENT);
}

int main(void) {
  cmdop_options lo = test_local_options(20000);
  cmdop_client *c;
  char cmd[600];

  if (mkdtemp(dir) == NULL) { perror("mkdtemp"); return 1; }
  c = test_connect(&lo);
  exec_options(c);
  streamed_stdin(c);
  files_on_disk(c);
  cmdop_client_free(c);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return check_report();
}
