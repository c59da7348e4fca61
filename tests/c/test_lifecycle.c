/*
 * Lifecycle: connect, close, free; double close; calls before connecting
 * and after closing fail with DISCONNECTED and a message; connect again
 * after close; on_disconnect fires once per close. Native `cmdop dev` stack.
 */
#include "check.h"

#include <pthread.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int connects, disconnects, reconnecting_disconnects;

static void on_connect(void *ud) {
  (void)ud;
  pthread_mutex_lock(&mu);
  connects++;
  pthread_mutex_unlock(&mu);
}

static void on_disconnect(void *ud, const char *reason, bool will_reconnect) {
  (void)ud;
  pthread_mutex_lock(&mu);
  disconnects++;
  if (reason == NULL || reason[0] == '\0') fprintf(stderr, "on_disconnect without a reason\n");
  if (will_reconnect) reconnecting_disconnects++; /* close is final */
  pthread_mutex_unlock(&mu);
}

/* For the free-waits-for-callbacks check: no locking needed, since the
 * test reads the fields only after cmdop_client_free returned. */
struct slow_ctx {
  int disconnects, finalised;
};

static void slow_on_disconnect(void *ud, const char *reason, bool will_reconnect) {
  struct slow_ctx *ctx = ud;
  (void)reason;
  (void)will_reconnect;
  sleep_ms(200);
  ctx->disconnects++;
}

static void slow_finalised(void *ud) { ((struct slow_ctx *)ud)->finalised++; }

static int counter(int *which) {
  int v;
  pthread_mutex_lock(&mu);
  v = *which;
  pthread_mutex_unlock(&mu);
  return v;
}

/* Wait up to 3 s for *which to reach want (callbacks run on a library thread). */
static int wait_count(int *which, int want) {
  double end = now_ms() + 3000;
  while (counter(which) < want && now_ms() < end) sleep_ms(20);
  return counter(which);
}

int main(void) {
  const char *host = env_required("CMDOP_HOST");
  uint16_t port = (uint16_t)strtol(env_required("CMDOP_PORT"), NULL, 10);
  const char *machine = env_required("CMDOP_TEST_HOSTNAME");
  cmdop_options o = test_local_options(10000);
  cmdop_client *c = NULL;
  cmdop_exec_result *r = NULL;
  cmdop_file_list *fl = NULL;
  size_t len = 0;
  const uint8_t *p;

  CHECK_OK(cmdop_local_new(host, port, NULL, &o, &c));
  CHECK_OK(cmdop_on_connect(c, on_connect, NULL, NULL));
  CHECK_OK(cmdop_on_disconnect(c, on_disconnect, NULL, NULL));

  /* Not connected yet: clear status, no crash, out stays NULL. */
  CHECK(!cmdop_is_connected(c));
  r = (cmdop_exec_result *)&o;
  {
    /* Two things are missing (connection, machine); either may be named. */
    cmdop_status s = cmdop_execute(c, "true", 0, &r);
    CHECK(s == CMDOP_STATUS_DISCONNECTED || s == CMDOP_STATUS_NOT_FOUND);
  }
  CHECK(r == NULL);
  CHECK(cmdop_last_error_message()[0] != '\0');
  CHECK_STATUS(cmdop_set_machine(c, machine), CMDOP_STATUS_DISCONNECTED);

  /* Closing a never-connected client does nothing. */
  CHECK_OK(cmdop_close(c));
  CHECK(counter(&disconnects) == 0);

  CHECK_OK(cmdop_connect(c));
  CHECK(cmdop_is_connected(c));
  CHECK(cmdop_last_error_message()[0] == '\0');
  CHECK(wait_count(&connects, 1) == 1);
  CHECK_OK(cmdop_connect(c)); /* already connected: no-op */
  sleep_ms(200);
  CHECK(counter(&connects) == 1);

  CHECK_OK(cmdop_set_machine(c, machine));
  CHECK_OK(cmdop_execute(c, "echo alive", 0, &r));
  p = cmdop_exec_result_output(r, &len);
  CHECK_BYTES(p, len, "alive\n", 6);
  cmdop_exec_result_free(r);
  r = NULL;

  /* Close, twice: one on_disconnect. */
  CHECK_OK(cmdop_close(c));
  CHECK(!cmdop_is_connected(c));
  CHECK_OK(cmdop_close(c));
  CHECK(wait_count(&disconnects, 1) == 1);
  sleep_ms(200);
  CHECK(counter(&disconnects) == 1);
  CHECK(counter(&reconnecting_disconnects) == 0);

  /* Use after close: DISCONNECTED saying what to do. */
  CHECK_STATUS(cmdop_execute(c, "true", 0, &r), CMDOP_STATUS_DISCONNECTED);
  CHECK(r == NULL);
  CHECK(strstr(cmdop_last_error_message(), "connect") != NULL);
  CHECK_STATUS(cmdop_list_files(c, "/", &fl), CMDOP_STATUS_DISCONNECTED);
  CHECK(fl == NULL);

  /* Connect again after close: works, fires on_connect again. */
  CHECK_OK(cmdop_connect(c));
  CHECK(cmdop_is_connected(c));
  CHECK(wait_count(&connects, 2) == 2);
  CHECK_OK(cmdop_set_machine(c, machine));
  CHECK_OK(cmdop_execute(c, "exit 4", 0, &r));
  CHECK(cmdop_exec_result_exit_code(r) == 4);
  cmdop_exec_result_free(r);

  /* Free without closing first; freeing NULL does nothing. */
  cmdop_client_free(c);
  cmdop_client_free(NULL);

  /* A client that never connected frees cleanly too. */
  c = NULL;
  CHECK_OK(cmdop_local_new(host, port, NULL, NULL, &c));
  cmdop_client_free(c);

  /* cmdop_client_free returns only after the callbacks it triggers (here a
   * slow on_disconnect) and the user_data finaliser: the application may
   * release its context right after. */
  {
    struct slow_ctx ctx = {0, 0};
    c = NULL;
    CHECK_OK(cmdop_local_new(host, port, NULL, &o, &c));
    CHECK_OK(cmdop_on_disconnect(c, slow_on_disconnect, &ctx, slow_finalised));
    CHECK_OK(cmdop_connect(c));
    cmdop_client_free(c);
    CHECK(ctx.disconnects == 1);
    CHECK(ctx.finalised == 1);
  }

  /* Many create/connect/free cycles: no leak, no crash (ASan watches). */
  {
    int i;
    for (i = 0; i < 20; i++) {
      c = NULL;
      CHECK_OK(cmdop_local_new(host, port, NULL, &o, &c));
      CHECK_OK(cmdop_connect(c));
      if (i % 2) CHECK_OK(cmdop_close(c));
      cmdop_client_free(c);
    }
  }
  return check_report();
}
