/*
 * Auto-reconnect: the server is stopped; calls fail UNAVAILABLE after
 * their timeout; the server comes back on the same port and the client
 * reconnects by itself (on_connect again) and executes again. A client
 * with max_reconnect_attempts gives up: final on_disconnect, then
 * DISCONNECTED until cmdop_connect(). Uses its own `cmdop server`.
 */
#include "events.h"

int main(void) {
  const char *host = env_required("CMDOP_HOST");
  uint16_t port = (uint16_t)strtol(env_required("CMDOP_PORT"), NULL, 10);
  cmdop_options o = test_local_options(2000);
  cmdop_client *c = NULL, *quitter = NULL;
  static struct events ev, evq;
  cmdop_exec_result *r = NULL;
  double t0;
  cmdop_status s;

  events_init(&ev);
  events_init(&evq);
  o.auto_reconnect = true;
  o.reconnect_delay_ms = 200;
  o.max_reconnect_delay_ms = 1000;
  o.max_reconnect_attempts = 0; /* never give up */
  CHECK_OK(cmdop_local_new(host, port, NULL, &o, &c));
  events_install(c, &ev);
  CHECK_OK(cmdop_connect(c));
  CHECK_OK(wait_set_machine(c, "solo", 10000));
  CHECK_OK(cmdop_execute(c, "true", 0, &r));
  cmdop_exec_result_free(r);
  r = NULL;

  o.reconnect_delay_ms = 100;
  o.max_reconnect_delay_ms = 200;
  o.max_reconnect_attempts = 2;
  CHECK_OK(cmdop_local_new(host, port, NULL, &o, &quitter));
  events_install(quitter, &evq);
  CHECK_OK(cmdop_connect(quitter));

  /* Server gone: both notice. */
  CHECK(server_ctl("server-stop") == 0);
  CHECK(events_wait(&ev, &ev.disconnects, 1, 10000) >= 1);
  CHECK(!cmdop_is_connected(c));
  pthread_mutex_lock(&ev.mu);
  CHECK(ev.first_will_reconnect == 1);
  pthread_mutex_unlock(&ev.mu);

  /* A call during reconnection waits up to its timeout, then UNAVAILABLE. */
  t0 = now_ms();
  s = cmdop_execute(c, "true", 1500, &r);
  CHECK(s == CMDOP_STATUS_UNAVAILABLE);
  CHECK(r == NULL);
  CHECK(now_ms() - t0 >= 1000 && now_ms() - t0 < 8000);
  CHECK(cmdop_last_error_message()[0] != '\0');

  /* The quitter gives up after 2 attempts: a final on_disconnect. */
  CHECK(events_wait(&evq, &evq.disconnects, 2, 15000) >= 2);
  pthread_mutex_lock(&evq.mu);
  printf("first reason: %s\nfinal reason: %s\n", evq.first_reason, evq.last_reason);
  CHECK(strcmp(evq.first_reason, evq.last_reason) != 0);
  CHECK(evq.first_will_reconnect == 1); /* dropped: the library keeps trying */
  CHECK(evq.last_will_reconnect == 0);  /* gave up: final */
  pthread_mutex_unlock(&evq.mu);
  CHECK(!cmdop_is_connected(quitter));
  {
    cmdop_session_list *l = NULL;
    CHECK_STATUS(cmdop_list_sessions(quitter, &l), CMDOP_STATUS_DISCONNECTED);
    CHECK(l == NULL);
  }

  /* Server back on the same port: the first client reconnects by itself. */
  CHECK(server_ctl("server-start") == 0);
  CHECK(events_wait(&ev, &ev.connects, 2, 20000) >= 2);
  CHECK(cmdop_is_connected(c));
  /* The agent reconnects on its own schedule; retry until it is back. */
  t0 = now_ms();
  do {
    s = cmdop_execute(c, "echo back", 0, &r);
    cmdop_exec_result_free(r);
    r = NULL;
    if (s == CMDOP_STATUS_OK) break;
    sleep_ms(250);
  } while (now_ms() - t0 < 20000);
  CHECK(s == CMDOP_STATUS_OK);

  /* The quitter stays down until asked, then connects again. */
  sleep_ms(500);
  CHECK(!cmdop_is_connected(quitter));
  CHECK_OK(cmdop_connect(quitter));
  CHECK(cmdop_is_connected(quitter));

  cmdop_client_free(quitter);
  cmdop_client_free(c);
  return check_report();
}
