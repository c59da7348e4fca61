/*
 * cmdop_execute_with_callback: chunks arrive while the command runs, tagged
 * stdout/stderr, add up to the result; a cancel token stops the command
 * from another thread (and from inside the chunk callback) and kills the
 * remote process. Native `cmdop dev` stack.
 */
#include "check.h"

#include <pthread.h>

struct chunks {
  size_t out, err, calls;
  double first_ms; /* arrival of the first chunk, relative to the start */
  double start_ms;
  char text[256];
  size_t text_len;
  cmdop_cancel_token *cancel_on_chunk;
  cmdop_client *client;
  cmdop_status nested;
};

static void on_chunk(void *ud, cmdop_stream_kind kind, const uint8_t *data, size_t len) {
  struct chunks *k = ud;
  size_t room = sizeof k->text - k->text_len;
  if (k->calls++ == 0) k->first_ms = now_ms() - k->start_ms;
  if (kind == CMDOP_STREAM_KIND_STDOUT) k->out += len;
  else if (kind == CMDOP_STREAM_KIND_STDERR) k->err += len;
  memcpy(k->text + k->text_len, data, len < room ? len : room);
  k->text_len += len < room ? len : room;
  if (k->cancel_on_chunk) cmdop_cancel_token_cancel(k->cancel_on_chunk);
  if (k->client) {
    cmdop_exec_result *r = NULL;
    k->nested = cmdop_execute(k->client, "true", 0, &r); /* blocking: refused */
    cmdop_exec_result_free(r);
  }
}

struct canceller {
  cmdop_cancel_token *token;
  long delay_ms;
};

static void *cancel_later(void *arg) {
  struct canceller *w = arg;
  sleep_ms(w->delay_ms);
  cmdop_cancel_token_cancel(w->token);
  return NULL;
}

int main(void) {
  cmdop_options o = test_local_options(20000);
  cmdop_client *c = test_connect(&o);
  cmdop_exec_result *r = NULL;
  struct chunks k;
  const uint8_t *p;
  size_t len;

  /* Chunks as they come: the first arrives long before the command ends. */
  memset(&k, 0, sizeof k);
  k.start_ms = now_ms();
  CHECK_OK(cmdop_execute_with_callback(c, "echo first; echo warn >&2; sleep 1.5; echo second", 0, on_chunk, &k, NULL,
                                NULL, &r));
  CHECK(k.calls >= 2);
  CHECK(k.first_ms < 1200);
  CHECK(now_ms() - k.start_ms >= 1500);
  CHECK(k.out == strlen("first\nsecond\n"));
  CHECK(k.err == strlen("warn\n"));
  p = cmdop_exec_result_stdout(r, &len);
  CHECK_BYTES(p, len, "first\nsecond\n", 13);
  CHECK(cmdop_exec_result_exit_code(r) == 0);
  cmdop_exec_result_free(r);
  r = NULL;

  /* NULL callback and NULL token are fine. */
  CHECK_OK(cmdop_execute_with_callback(c, "echo plain", 0, NULL, NULL, NULL, NULL, &r));
  p = cmdop_exec_result_output(r, &len);
  CHECK_BYTES(p, len, "plain\n", 6);
  cmdop_exec_result_free(r);
  r = NULL;

  /* Cancel from another thread: CANCELLED quickly, process killed. */
  {
    char pidfile[] = "/tmp/cmdop-ctest-pid-XXXXXX";
    char cmd[256];
    struct canceller w;
    pthread_t t;
    double t0;
    long pid;
    int fd = mkstemp(pidfile);
    CHECK(fd >= 0);
    if (fd >= 0) close(fd);
    snprintf(cmd, sizeof cmd, "echo $$ > %s; echo started; sleep 60", pidfile);
    w.token = cmdop_cancel_token_new();
    w.delay_ms = 800;
    CHECK(w.token != NULL);
    memset(&k, 0, sizeof k);
    k.start_ms = now_ms();
    CHECK(pthread_create(&t, NULL, cancel_later, &w) == 0);
    t0 = now_ms();
    CHECK_STATUS(cmdop_execute_with_callback(c, cmd, 0, on_chunk, &k, NULL, w.token, &r), CMDOP_STATUS_CANCELLED);
    CHECK(now_ms() - t0 >= 700 && now_ms() - t0 < 5000);
    CHECK(r == NULL);
    CHECK(k.out == strlen("started\n"));
    pthread_join(t, NULL);
    pid = read_pid_file(pidfile);
    CHECK(pid > 0);
    if (pid > 0) CHECK(wait_process_gone(pid, 3000));
    unlink(pidfile);

    /* A cancelled token stays cancelled: the next call stops at once. */
    t0 = now_ms();
    CHECK_STATUS(cmdop_execute_with_callback(c, "sleep 5", 0, NULL, NULL, NULL, w.token, &r), CMDOP_STATUS_CANCELLED);
    CHECK(now_ms() - t0 < 2000);
    cmdop_cancel_token_free(w.token);
  }

  /* Cancel from inside the chunk callback. */
  {
    cmdop_cancel_token *token = cmdop_cancel_token_new();
    double t0 = now_ms();
    memset(&k, 0, sizeof k);
    k.cancel_on_chunk = token;
    CHECK_STATUS(cmdop_execute_with_callback(c, "echo go; sleep 30", 0, on_chunk, &k, NULL, token, &r),
                 CMDOP_STATUS_CANCELLED);
    CHECK(now_ms() - t0 < 5000);
    cmdop_cancel_token_free(token);
  }

  /* A blocking call from inside the chunk callback: IN_CALLBACK. */
  memset(&k, 0, sizeof k);
  k.client = c;
  CHECK_OK(cmdop_execute_with_callback(c, "echo nested", 0, on_chunk, &k, NULL, NULL, &r));
  CHECK(k.nested == CMDOP_STATUS_IN_CALLBACK);
  cmdop_exec_result_free(r);
  r = NULL;

  /* Timeout on the streaming variant: TIMEOUT with the partial result. */
  memset(&k, 0, sizeof k);
  CHECK_STATUS(cmdop_execute_with_callback(c, "echo part; sleep 30", 1000, on_chunk, &k, NULL, NULL, &r),
               CMDOP_STATUS_TIMEOUT);
  CHECK(r != NULL && cmdop_exec_result_timed_out(r));
  CHECK(k.out == 5);
  cmdop_exec_result_free(r);

  CHECK_STATUS(cmdop_cancel_token_cancel(NULL), CMDOP_STATUS_INVALID_ARGUMENT);
  cmdop_cancel_token_free(NULL);
  cmdop_client_free(c);
  return check_report();
}
