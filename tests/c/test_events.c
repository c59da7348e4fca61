/*
 * Events: on_connect, on_error (status + message) and on_disconnect (with
 * a reason) on close and when the server goes away; user_data finalisers;
 * callbacks run on a library thread and blocking calls made from them get
 * IN_CALLBACK. Uses its own `cmdop server`, stopped mid-test.
 */
#include "events.h"

static pthread_t main_thread;
static int on_main_thread;
static cmdop_status nested = CMDOP_STATUS_OK;
static cmdop_client *nested_client;
static int finalised;

static void probing_connect(void *ud) {
  (void)ud;
  on_main_thread = pthread_equal(pthread_self(), main_thread);
  nested = cmdop_set_machine(nested_client, "solo"); /* blocking: refused */
  (void)cmdop_is_connected(nested_client);            /* non-blocking: fine */
}

static void count_finalised(void *ud) {
  (void)ud;
  finalised++;
}

int main(void) {
  const char *host = env_required("CMDOP_HOST");
  uint16_t port = (uint16_t)strtol(env_required("CMDOP_PORT"), NULL, 10);
  cmdop_options o = test_local_options(5000);
  cmdop_client *c = NULL;
  static struct events ev;
  cmdop_exec_result *r = NULL;

  events_init(&ev);
  main_thread = pthread_self();
  o.auto_reconnect = false;
  CHECK_OK(cmdop_local_new(host, port, NULL, &o, &c));
  events_install(c, &ev);

  /* on_connect runs on a library thread; blocking calls there are refused. */
  {
    cmdop_client *probe = NULL;
    CHECK_OK(cmdop_local_new(host, port, NULL, &o, &probe));
    nested_client = probe;
    CHECK_OK(cmdop_on_connect(probe, probing_connect, NULL, count_finalised));
    CHECK_OK(cmdop_connect(probe));
    sleep_ms(500);
    CHECK(!on_main_thread);
    CHECK(nested == CMDOP_STATUS_IN_CALLBACK);
    /* Replacing a callback finalises the old user_data once. */
    CHECK_OK(cmdop_on_connect(probe, NULL, NULL, NULL));
    sleep_ms(100);
    CHECK(finalised == 1);
    CHECK_OK(cmdop_on_disconnect(probe, events_on_disconnect, &ev, count_finalised));
    cmdop_client_free(probe); /* the remaining finaliser runs on free */
    sleep_ms(300);
    CHECK(finalised == 2);
    pthread_mutex_lock(&ev.mu);
    ev.disconnects = 0;
    pthread_mutex_unlock(&ev.mu);
  }

  CHECK_OK(cmdop_connect(c));
  CHECK(events_wait(&ev, &ev.connects, 1, 3000) == 1);

  /* on_error: status and message of a failed call. */
  CHECK_STATUS(cmdop_set_machine(c, "no-such-machine"), CMDOP_STATUS_NOT_FOUND);
  CHECK(events_wait(&ev, &ev.errors, 1, 3000) >= 1);
  pthread_mutex_lock(&ev.mu);
  CHECK(ev.last_error_status == CMDOP_STATUS_NOT_FOUND);
  CHECK(strstr(ev.last_error, "no-such-machine") != NULL);
  pthread_mutex_unlock(&ev.mu);

  CHECK_OK(wait_set_machine(c, "solo", 10000));
  CHECK_OK(cmdop_execute(c, "true", 0, &r));
  cmdop_exec_result_free(r);
  r = NULL;

  /* on_disconnect on close, with a reason. */
  CHECK_OK(cmdop_close(c));
  CHECK(events_wait(&ev, &ev.disconnects, 1, 3000) == 1);
  pthread_mutex_lock(&ev.mu);
  CHECK(ev.last_reason[0] != '\0');
  CHECK(ev.last_will_reconnect == 0); /* closed: final */
  pthread_mutex_unlock(&ev.mu);

  /* on_disconnect when the server dies (no auto-reconnect here). */
  CHECK_OK(cmdop_connect(c));
  CHECK(events_wait(&ev, &ev.connects, 2, 3000) == 2);
  CHECK(server_ctl("server-stop") == 0);
  CHECK(events_wait(&ev, &ev.disconnects, 2, 10000) == 2);
  CHECK(!cmdop_is_connected(c));
  pthread_mutex_lock(&ev.mu);
  printf("disconnect reason: %s\n", ev.last_reason);
  CHECK(ev.last_reason[0] != '\0');
  CHECK(ev.last_will_reconnect == 0); /* auto_reconnect off: final */
  pthread_mutex_unlock(&ev.mu);
  {
    cmdop_status s = cmdop_execute(c, "true", 0, &r);
    CHECK(s == CMDOP_STATUS_DISCONNECTED || s == CMDOP_STATUS_UNAVAILABLE);
    CHECK(r == NULL);
  }
  /* Errors of failing calls are reported through on_error too. */
  CHECK(events_wait(&ev, &ev.errors, 2, 3000) >= 2);

  /* Removing callbacks: no more events. */
  CHECK_OK(cmdop_on_connect(c, NULL, NULL, NULL));
  CHECK_OK(cmdop_on_disconnect(c, NULL, NULL, NULL));
  CHECK_OK(cmdop_on_error(c, NULL, NULL, NULL));
  CHECK(server_ctl("server-start") == 0);
  CHECK_OK(cmdop_connect(c));
  CHECK_OK(cmdop_close(c));
  sleep_ms(200);
  CHECK(events_get(&ev, &ev.connects) == 2);
  CHECK(events_get(&ev, &ev.disconnects) == 2);

  cmdop_client_free(c);
  return check_report();
}
