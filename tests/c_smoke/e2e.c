/*
 * End-to-end check of the main C calls against a running control plane and
 * agent (`cmdop dev`). Reads CMDOP_HOST, CMDOP_PORT, CMDOP_API_KEY and
 * CMDOP_TEST_HOSTNAME (tests/harness.sh exports them). Run with
 * tests/c_smoke/run_e2e.sh.
 */
#include "cmdop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <pthread.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond)                                                         \
  do {                                                                      \
    if (!(cond)) {                                                          \
      fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n",         \
              __FILE__, __LINE__, #cond, cmdop_last_error_message());       \
      failures++;                                                           \
    }                                                                       \
  } while (0)

static int connects = 0;
static void on_connect(void *ud) { (void)ud; connects++; }

static size_t streamed = 0;
static void on_chunk(void *ud, cmdop_stream_kind kind, const uint8_t *data, size_t len) {
  (void)ud; (void)kind; (void)data;
  streamed += len;
}

static size_t attached = 0;
static void on_output(void *ud, const uint8_t *data, size_t len) {
  (void)ud; (void)data;
  attached += len;
}

static void *cancel_later(void *token) {
  struct timespec pause = {0, 300000000L};
  nanosleep(&pause, NULL);
  cmdop_cancel((cmdop_cancel_token *)token);
  return NULL;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

int main(void) {
  const char *host = getenv("CMDOP_HOST");
  const char *port = getenv("CMDOP_PORT");
  const char *machine = getenv("CMDOP_TEST_HOSTNAME");
  cmdop_local_options o = CMDOP_LOCAL_OPTIONS_INIT;
  cmdop_client *c = NULL;
  cmdop_exec_result *r = NULL;
  cmdop_connection_info *info = NULL;
  cmdop_session *s = NULL;
  cmdop_session_list *sl = NULL;
  cmdop_file_list *fl = NULL;
  cmdop_bytes *b = NULL;
  cmdop_stream *st = NULL;
  size_t len = 0;
  const uint8_t *p;
  double t0;
  int i;
  int native;

  if (!host || !port || !machine) {
    fprintf(stderr, "set CMDOP_HOST, CMDOP_PORT and CMDOP_TEST_HOSTNAME\n");
    return 2;
  }
  o.timeout_ms = 10000;
  CHECK(cmdop_local_new(host, (uint16_t)atoi(port), &o, &c) == CMDOP_STATUS_OK);
  CHECK(cmdop_on_connect(c, on_connect, NULL, NULL) == CMDOP_STATUS_OK);
  CHECK(cmdop_connect(c) == CMDOP_STATUS_OK);
  CHECK(cmdop_is_connected(c));

  CHECK(cmdop_connection_info_get(c, &info) == CMDOP_STATUS_OK);
  native = cmdop_connection_info_native_exec(info);
  printf("server %s version %s native_exec %d latency %.2f ms\n", cmdop_connection_info_server(info),
         cmdop_connection_info_server_version(info), native, cmdop_connection_info_latency_ms(info));
  cmdop_connection_info_free(info);

  CHECK(cmdop_set_machine(c, "no-such-machine-xyz") == CMDOP_STATUS_NOT_FOUND);
  CHECK(cmdop_set_machine(c, machine) == CMDOP_STATUS_OK);

  CHECK(cmdop_execute(c, "echo hello; echo oops >&2; exit 3", 0, &r) == CMDOP_STATUS_OK);
  p = cmdop_exec_result_output(r, &len);
  printf("exit %d native %d output [%.*s]\n", cmdop_exec_result_exit_code(r), cmdop_exec_result_native(r),
         (int)len, (const char *)p);
  CHECK(cmdop_exec_result_exit_code(r) == 3);
  CHECK(cmdop_exec_result_native(r) == (native != 0));
  p = cmdop_exec_result_stdout(r, &len);
  CHECK(len >= 6 && memcmp(p, "hello\n", 6) == 0);
  cmdop_exec_result_free(r);

  /* Latency of a trivial command, a few runs. */
  t0 = now_ms();
  for (i = 0; i < 20; i++) {
    CHECK(cmdop_execute(c, "true", 0, &r) == CMDOP_STATUS_OK);
    cmdop_exec_result_free(r);
  }
  printf("execute(true): %.2f ms per call (%s path)\n", (now_ms() - t0) / 20, native ? "native" : "terminal");

  /* Large output. */
  /* (below the control plane's 1 MiB per-session buffer, so that the
   * terminal path cannot lose output however slowly it polls) */
  CHECK(cmdop_execute(c, "seq 1 100000", 0, &r) == CMDOP_STATUS_OK);
  p = cmdop_exec_result_output(r, &len);
  CHECK(len == 588895);
  CHECK(!cmdop_exec_result_truncated(r));
  cmdop_exec_result_free(r);

  /* Timeout keeps partial output. */
  t0 = now_ms();
  CHECK(cmdop_execute(c, "echo before; sleep 30", 1000, &r) == CMDOP_STATUS_TIMEOUT);
  CHECK(r != NULL);
  p = cmdop_exec_result_output(r, &len);
  CHECK(len >= 7 && memcmp(p, "before\n", 7) == 0);
  CHECK(now_ms() - t0 < 6000);
  cmdop_exec_result_free(r);
  CHECK(cmdop_execute(c, "echo after", 0, &r) == CMDOP_STATUS_OK); /* the shell is usable again */
  p = cmdop_exec_result_output(r, &len);
  CHECK(len == 6 && memcmp(p, "after\n", 6) == 0);
  cmdop_exec_result_free(r);

  /* Streaming. */
  CHECK(cmdop_execute_stream(c, "for i in 1 2 3; do echo $i; done", 0, on_chunk, NULL, NULL, &r) == CMDOP_STATUS_OK);
  CHECK(streamed == 6);
  cmdop_exec_result_free(r);

  /* Cancel from another thread. */
  {
    cmdop_cancel_token *tok = cmdop_cancel_token_new();
    pthread_t th;
    pthread_create(&th, NULL, cancel_later, tok);
    t0 = now_ms();
    CHECK(cmdop_execute_stream(c, "sleep 20", 0, NULL, NULL, tok, &r) == CMDOP_STATUS_CANCELLED);
    CHECK(r == NULL);
    CHECK(now_ms() - t0 < 3000);
    pthread_join(th, NULL);
    cmdop_cancel_token_free(tok);
    CHECK(cmdop_execute(c, "echo alive", 0, &r) == CMDOP_STATUS_OK);
    p = cmdop_exec_result_output(r, &len);
    CHECK(len == 6 && memcmp(p, "alive\n", 6) == 0);
    cmdop_exec_result_free(r);
  }

  /* Files. */
  CHECK(cmdop_file_write(c, "/tmp/cmdop-e2e.txt", (const uint8_t *)"abc", 3) == CMDOP_STATUS_OK);
  CHECK(cmdop_file_read(c, "/tmp/cmdop-e2e.txt", &b) == CMDOP_STATUS_OK);
  CHECK(cmdop_bytes_len(b) == 3 && memcmp(cmdop_bytes_data(b), "abc", 3) == 0);
  cmdop_bytes_free(b);
  CHECK(cmdop_execute(c, "rm -f /tmp/cmdop-e2e.txt", 0, &r) == CMDOP_STATUS_OK);
  cmdop_exec_result_free(r);
  CHECK(cmdop_files_list(c, "/tmp", &fl) == CMDOP_STATUS_OK);
  CHECK(cmdop_file_list_count(fl) > 0);
  cmdop_file_list_free(fl);
  CHECK(cmdop_file_read(c, "/nonexistent/file", &b) == CMDOP_STATUS_NOT_FOUND);

  /* Sessions and attach. */
  CHECK(cmdop_list_sessions(c, &sl) == CMDOP_STATUS_OK);
  CHECK(cmdop_session_list_count(sl) >= 1);
  cmdop_session_list_free(sl);
  CHECK(cmdop_get_active_session(c, machine, &s) == CMDOP_STATUS_OK);
  if (s) {
    CHECK(strcmp(cmdop_session_status(s), "connected") == 0);
    CHECK(cmdop_stream_attach(c, cmdop_session_id(s), on_output, NULL, &st) == CMDOP_STATUS_OK);
    CHECK(cmdop_execute(c, "echo attached-output", 0, &r) == CMDOP_STATUS_OK);
    cmdop_exec_result_free(r);
    CHECK(cmdop_stream_write(st, (const uint8_t *)"echo typed\n", 11) == CMDOP_STATUS_OK);
    {
      struct timespec pause = {0, 300000000L};
      nanosleep(&pause, NULL);
    }
    CHECK(cmdop_stream_close(st) == CMDOP_STATUS_OK);
    printf("attach received %zu bytes\n", attached);
    if (!native) CHECK(attached > 0);
    cmdop_session_free(s);
  }

  CHECK(cmdop_close(c) == CMDOP_STATUS_OK);
  CHECK(cmdop_execute(c, "true", 0, &r) == CMDOP_STATUS_DISCONNECTED);
  cmdop_client_free(c);
  CHECK(connects == 1);

  if (failures) {
    fprintf(stderr, "e2e: %d check(s) failed\n", failures);
    return 1;
  }
  printf("e2e: ok\n");
  return 0;
}
