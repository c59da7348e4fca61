/*
 * Tiny test kit shared by the libcmdop C tests.
 *
 * CHECK* macros record a failure (with file:line and the library's last
 * error message) and carry on, so one run shows every broken expectation.
 * A test's main() ends with `return check_report();`.
 *
 * Helpers read the stack a test runs against from the environment that
 * tests/c/run.sh sets: CMDOP_HOST, CMDOP_PORT, CMDOP_API_KEY,
 * CMDOP_TEST_HOSTNAME.
 */
#ifndef CMDOP_TEST_CHECK_H
#define CMDOP_TEST_CHECK_H

#include "cmdop.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int check_failures;
static int check_count;

/* Record a failed expectation. */
static inline void check_fail(const char *file, int line, const char *fmt, ...) {
  va_list ap;
  check_failures++;
  fprintf(stderr, "%s:%d: FAIL: ", file, line);
  va_start(ap, fmt);
  vfprintf(stderr, fmt, ap);
  va_end(ap);
  fprintf(stderr, "\n");
  fflush(stderr);
}

/* `cond` must hold. */
#define CHECK(cond)                                                                        \
  do {                                                                                     \
    check_count++;                                                                         \
    if (!(cond))                                                                           \
      check_fail(__FILE__, __LINE__, "%s (last error: \"%s\")", #cond,                     \
                 cmdop_last_error_message());                                              \
  } while (0)

/* `call` must return `expected` (a cmdop_status). */
#define CHECK_STATUS(call, expected)                                                       \
  do {                                                                                     \
    cmdop_status check_got_ = (call);                                                      \
    cmdop_status check_want_ = (expected);                                                 \
    check_count++;                                                                         \
    if (check_got_ != check_want_)                                                         \
      check_fail(__FILE__, __LINE__, "%s returned %s (%d), expected %s (%d); last error: \"%s\"", \
                 #call, cmdop_status_str((int)check_got_), (int)check_got_,                \
                 cmdop_status_str((int)check_want_), (int)check_want_,                     \
                 cmdop_last_error_message());                                              \
  } while (0)

#define CHECK_OK(call) CHECK_STATUS(call, CMDOP_STATUS_OK)

/* The thread's last error message must contain `needle`. */
#define CHECK_ERROR_MENTIONS(needle)                                                       \
  do {                                                                                     \
    const char *check_msg_ = cmdop_last_error_message();                                   \
    check_count++;                                                                         \
    if (check_msg_ == NULL || strstr(check_msg_, (needle)) == NULL)                        \
      check_fail(__FILE__, __LINE__, "last error \"%s\" does not mention \"%s\"",          \
                 check_msg_ ? check_msg_ : "(null)", (needle));                            \
  } while (0)

/* Two byte ranges must be equal. */
#define CHECK_BYTES(ptr, len, want, want_len)                                              \
  do {                                                                                     \
    const void *check_ptr_ = (ptr);                                                        \
    size_t check_len_ = (len);                                                             \
    size_t check_want_len_ = (want_len);                                                   \
    check_count++;                                                                         \
    if (check_len_ != check_want_len_ ||                                                   \
        (check_len_ > 0 && memcmp(check_ptr_, (want), check_len_) != 0))                   \
      check_fail(__FILE__, __LINE__, "%s: got %zu bytes \"%.*s\", expected %zu \"%.*s\"", \
                 #ptr, check_len_, (int)(check_len_ > 200 ? 200 : check_len_),             \
                 check_ptr_ ? (const char *)check_ptr_ : "", check_want_len_,              \
                 (int)(check_want_len_ > 200 ? 200 : check_want_len_), (const char *)(want)); \
  } while (0)

/* Print the verdict; the exit status of a test. */
static inline int check_report(void) {
  const char *name = getenv("CMDOP_TEST_NAME");
  if (check_count == 0) {
    /* A test that checked nothing proved nothing. */
    fprintf(stderr, "%s: made no check\n", name ? name : "test");
    return 1;
  }
  if (check_failures) {
    fprintf(stderr, "%s: %d of %d checks failed\n", name ? name : "test", check_failures, check_count);
    return 1;
  }
  printf("%s: %d checks passed\n", name ? name : "test", check_count);
  return 0;
}

/* The environment variable `name`, or exit(2) saying it is missing. */
static inline const char *env_required(const char *name) {
  const char *v = getenv(name);
  if (v == NULL || *v == '\0') {
    fprintf(stderr, "%s is not set: run this test through tests/c/run.sh\n", name);
    exit(2);
  }
  return v;
}

/* Monotonic milliseconds. */
static inline double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

static inline void sleep_ms(long ms) {
  struct timespec ts;
  ts.tv_sec = ms / 1000;
  ts.tv_nsec = (ms % 1000) * 1000000L;
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* Does [hay, hay+len) contain the NUL-terminated `needle`? */
static inline int bytes_contain(const uint8_t *hay, size_t len, const char *needle) {
  size_t n = strlen(needle), i;
  if (hay == NULL || n > len) return 0;
  for (i = 0; i + n <= len; i++)
    if (memcmp(hay + i, needle, n) == 0) return 1;
  return 0;
}

/* True while process `pid` exists and is not a zombie. */
static inline int process_alive(long pid) {
  char path[64], buf[512];
  FILE *f;
  char *paren;
  size_t n;
  snprintf(path, sizeof path, "/proc/%ld/stat", pid);
  f = fopen(path, "r");
  if (f == NULL) return 0;
  n = fread(buf, 1, sizeof buf - 1, f);
  fclose(f);
  buf[n] = '\0';
  paren = strrchr(buf, ')');
  return paren != NULL && paren[1] == ' ' && paren[2] != 'Z';
}

/* Wait up to `ms` for process `pid` to be gone; true when it is. */
static inline int wait_process_gone(long pid, long ms) {
  double end = now_ms() + (double)ms;
  while (process_alive(pid)) {
    if (now_ms() > end) return 0;
    sleep_ms(50);
  }
  return 1;
}

/* The first number in file `path`, or -1. */
static inline long read_pid_file(const char *path) {
  long pid = -1;
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  if (fscanf(f, "%ld", &pid) != 1) pid = -1;
  fclose(f);
  return pid;
}

/* Local-client options for the stack under test, with a short timeout. */
static inline cmdop_options test_local_options(uint32_t timeout_ms) {
  cmdop_options o = CMDOP_OPTIONS_INIT;
  o.timeout_ms = timeout_ms;
  return o;
}

/* A local client for the stack in the environment, connected and with the
 * test machine selected; exits when that fails (nothing else could pass). */
static inline cmdop_client *test_connect(const cmdop_options *opts) {
  const char *host = env_required("CMDOP_HOST");
  long port = strtol(env_required("CMDOP_PORT"), NULL, 10);
  const char *machine = env_required("CMDOP_TEST_HOSTNAME");
  cmdop_client *c = NULL;
  cmdop_status s = cmdop_local_new(host, (uint16_t)port, NULL, opts, &c);
  if (s != CMDOP_STATUS_OK) {
    fprintf(stderr, "cmdop_local_new: %s: %s\n", cmdop_status_str((int)s), cmdop_last_error_message());
    exit(1);
  }
  s = cmdop_connect(c);
  if (s != CMDOP_STATUS_OK) {
    fprintf(stderr, "cmdop_connect: %s: %s\n", cmdop_status_str((int)s), cmdop_last_error_message());
    exit(1);
  }
  s = cmdop_set_machine(c, machine);
  if (s != CMDOP_STATUS_OK) {
    fprintf(stderr, "cmdop_set_machine(%s): %s: %s\n", machine, cmdop_status_str((int)s),
            cmdop_last_error_message());
    exit(1);
  }
  return c;
}

/* Retry cmdop_set_machine for up to `ms` (agents take a moment to dial in). */
static inline cmdop_status wait_set_machine(cmdop_client *c, const char *hostname, long ms) {
  double end = now_ms() + (double)ms;
  cmdop_status s;
  for (;;) {
    s = cmdop_set_machine(c, hostname);
    if (s == CMDOP_STATUS_OK || s == CMDOP_STATUS_AMBIGUOUS || now_ms() > end) return s;
    sleep_ms(100);
  }
}

/* Run `command`, expect OK, and return its result (NULL on failure). */
#define RUN(client, command, timeout_ms, result_ptr)                                       \
  CHECK_OK(cmdop_execute((client), (command), (timeout_ms), (result_ptr)))

#endif /* CMDOP_TEST_CHECK_H */
