/*
 * Say what is known: the agent is SIGKILLed while a command runs. Nothing
 * confirmed the command was killed, so the call returns OUTCOME_UNKNOWN
 * (not TIMEOUT, not "was killed") with the output received so far, soon
 * after the kill. Uses its own `cmdop server` + agent (the agent is not
 * restarted).
 */
#include "events.h"

#include <pthread.h>

struct seen {
  pthread_mutex_t mu;
  char text[256];
  size_t len;
};

static void on_chunk(void *ud, cmdop_stream_kind kind, const uint8_t *data, size_t len) {
  struct seen *s = ud;
  size_t room;
  (void)kind;
  pthread_mutex_lock(&s->mu);
  room = sizeof s->text - 1 - s->len;
  if (len > room) len = room;
  memcpy(s->text + s->len, data, len);
  s->len += len;
  pthread_mutex_unlock(&s->mu);
}

struct call {
  cmdop_client *c;
  struct seen *seen;
  cmdop_status status;
  cmdop_exec_result *r;
  char message[1024];
  double done_ms;
};

static void *run(void *arg) {
  struct call *k = arg;
  k->status = cmdop_execute_with_callback(k->c, "echo before; sleep 30; echo after", 60000, on_chunk,
                                          k->seen, NULL, NULL, &k->r);
  snprintf(k->message, sizeof k->message, "%s", cmdop_last_error_message());
  k->done_ms = now_ms();
  return NULL;
}

static int seen_before(struct seen *s) {
  int yes;
  pthread_mutex_lock(&s->mu);
  yes = strstr(s->text, "before") != NULL;
  pthread_mutex_unlock(&s->mu);
  return yes;
}

int main(void) {
  cmdop_options o = test_local_options(10000);
  cmdop_client *c = test_connect(&o);
  static struct seen seen;
  struct call k = {0};
  pthread_t th;
  double end, killed;
  size_t n = 0;
  const uint8_t *out;

  pthread_mutex_init(&seen.mu, NULL);
  k.c = c;
  k.seen = &seen;
  CHECK(pthread_create(&th, NULL, run, &k) == 0);
  end = now_ms() + 15000;
  while (!seen_before(&seen) && now_ms() < end) sleep_ms(10);
  CHECK(seen_before(&seen));
  killed = now_ms();
  CHECK(server_ctl("agent-kill") == 0);
  CHECK(pthread_join(th, NULL) == 0);
  printf("%s %.0f ms after the agent's kill: %s\n", cmdop_status_str((int)k.status),
         k.done_ms - killed, k.message);
  CHECK_STATUS(k.status, CMDOP_STATUS_OUTCOME_UNKNOWN);
  CHECK(strstr(k.message, "unknown") != NULL);
  CHECK(strstr(k.message, "was killed") == NULL);
  CHECK(k.done_ms - killed < 5000);
  CHECK(k.r != NULL);
  if (k.r) {
    out = cmdop_exec_result_output(k.r, &n);
    CHECK(bytes_contain(out, n, "before"));
    CHECK(!bytes_contain(out, n, "after"));
    CHECK(cmdop_exec_result_exit_code(k.r) == -1);
    CHECK(!cmdop_exec_result_timed_out(k.r));
    cmdop_exec_result_free(k.r);
  }
  cmdop_client_free(c);
  pthread_mutex_destroy(&seen.mu);
  return check_report();
}
