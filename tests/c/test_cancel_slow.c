/*
 * Cancel first: with an output callback that takes 0.25 s per chunk, a
 * cancelled cmdop_execute_with_callback() returns within 100 ms of
 * cmdop_cancel_token_cancel(), and no callback starts after that cancel
 * returned (one already running may finish). Also from inside the
 * callback. Native `cmdop dev` stack.
 */
#include "check.h"

#include <pthread.h>

#define RUNS 5
#define SLOW_MS 250

struct slow {
  pthread_mutex_t mu;
  int starts;          /* callbacks started */
  int running;         /* callbacks running now */
  double last_start_ms;
  double cancel_ms; /* when the callback cancelled */
  int cancel_inside_at; /* cancel from inside the callback at this start (0: no) */
  cmdop_cancel_token *token;
  int frees;                 /* calls of the finaliser */
  int running_at_free;       /* callbacks running when it was called */
};

/* The finaliser of user_data: must come once, after the last callback. */
static void free_slow(void *ud) {
  struct slow *s = ud;
  pthread_mutex_lock(&s->mu);
  s->frees++;
  s->running_at_free += s->running;
  pthread_mutex_unlock(&s->mu);
}

static void on_chunk(void *ud, cmdop_stream_kind kind, const uint8_t *data, size_t len) {
  struct slow *s = ud;
  int n;
  (void)kind;
  (void)data;
  (void)len;
  pthread_mutex_lock(&s->mu);
  n = ++s->starts;
  s->running++;
  s->last_start_ms = now_ms();
  pthread_mutex_unlock(&s->mu);
  if (s->cancel_inside_at && n == s->cancel_inside_at) {
    s->cancel_ms = now_ms();
    cmdop_cancel_token_cancel(s->token);
  }
  sleep_ms(SLOW_MS);
  pthread_mutex_lock(&s->mu);
  s->running--;
  pthread_mutex_unlock(&s->mu);
}

static int get_starts(struct slow *s) {
  int v;
  pthread_mutex_lock(&s->mu);
  v = s->starts;
  pthread_mutex_unlock(&s->mu);
  return v;
}

struct canceller {
  struct slow *s;
  cmdop_cancel_token *token;
  double called_ms, returned_ms;
  int starts_when_returned;
};

static void *cancel_after_two(void *arg) {
  struct canceller *c = arg;
  while (get_starts(c->s) < 2) sleep_ms(5);
  sleep_ms(50); /* inside the second callback's sleep */
  c->called_ms = now_ms();
  cmdop_cancel_token_cancel(c->token);
  c->returned_ms = now_ms();
  c->starts_when_returned = get_starts(c->s);
  return NULL;
}

static int cmp_double(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return (x > y) - (x < y);
}

/* A command printing a line every 20 ms, for a minute. */
static const char *const CHATTY =
    "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); sleep 0.02; done";

int main(void) {
  cmdop_options o = test_local_options(60000);
  cmdop_client *c = test_connect(&o);
  static struct slow s;
  double latency[RUNS];
  int run;

  for (run = 0; run < RUNS; run++) {
    cmdop_cancel_token *token = cmdop_cancel_token_new();
    struct canceller can = {0};
    pthread_t th;
    cmdop_exec_result *r = NULL;
    cmdop_status st;
    double returned;
    int after;

    CHECK(token != NULL);
    memset(&s, 0, sizeof s);
    pthread_mutex_init(&s.mu, NULL);
    can.s = &s;
    can.token = token;
    CHECK(pthread_create(&th, NULL, cancel_after_two, &can) == 0);
    st = cmdop_execute_with_callback(c, CHATTY, 60000, on_chunk, &s, free_slow, token, &r);
    returned = now_ms();
    CHECK(pthread_join(th, NULL) == 0);
    CHECK_STATUS(st, CMDOP_STATUS_CANCELLED);
    CHECK(r == NULL);
    latency[run] = returned - can.called_ms;
    printf("run %d: returned %.1f ms after cmdop_cancel_token_cancel (cancel itself took %.2f ms)\n",
           run, latency[run], can.returned_ms - can.called_ms);
    CHECK(latency[run] < 100.0);
    /* The callback that was running finishes; nothing new starts. */
    sleep_ms(2 * SLOW_MS + 100);
    after = get_starts(&s);
    CHECK(after == can.starts_when_returned);
    pthread_mutex_lock(&s.mu);
    CHECK(s.running == 0);
    /* The finaliser came once, when no callback was running any more. */
    CHECK(s.frees == 1);
    CHECK(s.running_at_free == 0);
    pthread_mutex_unlock(&s.mu);
    cmdop_cancel_token_free(token);
    pthread_mutex_destroy(&s.mu);
  }
  qsort(latency, RUNS, sizeof latency[0], cmp_double);
  printf("cancel latency over %d runs: median %.1f ms, max %.1f ms\n", RUNS, latency[RUNS / 2],
         latency[RUNS - 1]);

  /* Cancelled from inside the (slow) callback: same guarantees. */
  {
    cmdop_cancel_token *token = cmdop_cancel_token_new();
    cmdop_exec_result *r = NULL;
    cmdop_status st;
    double returned;
    CHECK(token != NULL);
    memset(&s, 0, sizeof s);
    pthread_mutex_init(&s.mu, NULL);
    s.cancel_inside_at = 2;
    s.token = token;
    st = cmdop_execute_with_callback(c, CHATTY, 60000, on_chunk, &s, NULL, token, &r);
    returned = now_ms();
    CHECK_STATUS(st, CMDOP_STATUS_CANCELLED);
    CHECK(r == NULL);
    /* Returned while the cancelling callback still sleeps. */
    pthread_mutex_lock(&s.mu);
    printf("cancel from inside the callback: returned after %.1f ms\n", returned - s.cancel_ms);
    CHECK(returned - s.cancel_ms < 100.0);
    pthread_mutex_unlock(&s.mu);
    sleep_ms(2 * SLOW_MS + 100);
    CHECK(get_starts(&s) == 2);
    cmdop_cancel_token_free(token);
    pthread_mutex_destroy(&s.mu);
  }

  /* Without a cancel every callback has run when the call returns. */
  {
    cmdop_exec_result *r = NULL;
    memset(&s, 0, sizeof s);
    pthread_mutex_init(&s.mu, NULL);
    CHECK_OK(cmdop_execute_with_callback(c, "for i in 1 2 3; do echo $i; sleep 0.3; done", 0, on_chunk,
                                         &s, free_slow, NULL, &r));
    pthread_mutex_lock(&s.mu);
    CHECK(s.starts >= 1 && s.running == 0);
    CHECK(s.frees == 1); /* before the call returned */
    pthread_mutex_unlock(&s.mu);
    CHECK(r != NULL && cmdop_exec_result_output(r, NULL) != NULL);
    cmdop_exec_result_free(r);
    pthread_mutex_destroy(&s.mu);
  }

  cmdop_client_free(c);
  return check_report();
}
