/*
 * A client with a server list (cmdop_options.servers, version 2):
 *  - bad lists are INVALID_ARGUMENT with a message naming the field;
 *  - with servers_in_order, cmdop_connect() takes the first server of the
 *    list, and cmdop_get_connection_info() names it;
 *  - kill -9 of that server: on_disconnect(will_reconnect=true), then
 *    on_connect on the other one, and a new execute succeeds through it
 *    (the agent, given both servers, moved there too); the time from the
 *    kill to that execute is printed;
 *  - a list whose first server is dead from the start connects to the next.
 * Stack "pair" of tests/c/run.sh: two `cmdop server`s sharing one data
 * directory, an agent started with --server A,B --servers-in-order (on A).
 * The two are not a cluster (nothing is forwarded between them), so the
 * client must use A, where the agent is: it sets servers_in_order
 * (cmdop_options version 3), and five clients in a row all start there.
 */
#include "events.h"

static int server_ctl_dir(const char *verb, const char *dir) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s' %s '%s'", env_required("CMDOP_TEST_CTL"), verb, dir);
  return system(cmd);
}

/* The server the client uses now, as "http://host:port" (caller frees). */
static char *server_in_use(cmdop_client *c) {
  cmdop_connection_info *info = NULL;
  char *s = NULL;
  if (cmdop_get_connection_info(c, &info) == CMDOP_STATUS_OK) {
    const char *v = cmdop_connection_info_server(info);
    s = strdup(v ? v : "");
  }
  cmdop_connection_info_free(info);
  return s;
}

/* Execute `echo word` until it succeeds or `ms` pass; 1 on success. */
static int echo_until_ok(cmdop_client *c, const char *machine, const char *word, long ms) {
  double end = now_ms() + (double)ms;
  char cmd[128];
  snprintf(cmd, sizeof cmd, "echo %s", word);
  for (;;) {
    cmdop_exec_result *r = NULL;
    if (cmdop_set_machine(c, machine) == CMDOP_STATUS_OK &&
        cmdop_execute(c, cmd, 20000, &r) == CMDOP_STATUS_OK) {
      size_t n = 0;
      const uint8_t *out = cmdop_exec_result_output(r, &n);
      int ok = cmdop_exec_result_exit_code(r) == 0 && bytes_contain(out, n, word);
      cmdop_exec_result_free(r);
      if (ok) return 1;
    } else {
      cmdop_exec_result_free(r);
    }
    if (now_ms() > end) return 0;
    sleep_ms(50);
  }
}

static void bad_lists(void) {
  const char *holes[] = {"127.0.0.1:1", NULL};
  const char *empty[] = {"127.0.0.1:1", ""};
  const char *one[] = {"127.0.0.1:1"};
  cmdop_options o = test_local_options(5000);
  cmdop_client *c = (cmdop_client *)1;

  o.server_count = 2; /* a count without an array */
  CHECK_STATUS(cmdop_local_new(NULL, 0, "k", &o, &c), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(c == NULL);
  CHECK_ERROR_MENTIONS("opts->servers is NULL");
  o.servers = holes;
  CHECK_STATUS(cmdop_remote_new("k", &o, &c), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("opts->servers[1]");
  o.servers = empty;
  CHECK_STATUS(cmdop_local_new(NULL, 0, "k", &o, &c), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("opts->servers[1] is empty");
  o.servers = one;
  o.server_count = CMDOP_MAX_SERVERS + 1;
  CHECK_STATUS(cmdop_local_new(NULL, 0, "k", &o, &c), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("at most");
  o.server_count = 1;
  o.server = "127.0.0.1:2";
  CHECK_STATUS(cmdop_remote_new("k", &o, &c), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("both opts->server and opts->servers");
  /* Without a list a local client still needs its host. */
  o = test_local_options(5000);
  CHECK_STATUS(cmdop_local_new(NULL, 0, "k", &o, &c), CMDOP_STATUS_INVALID_ARGUMENT);
}

int main(void) {
  const char *a = env_required("CMDOP_TEST_SERVER_A");
  const char *b = env_required("CMDOP_TEST_SERVER_B");
  const char *dir_a = env_required("CMDOP_TEST_SERVER_DIR");
  const char *machine = env_required("CMDOP_TEST_HOSTNAME");
  const char *list[2];
  char want[256];
  cmdop_options o = test_local_options(15000);
  cmdop_client *c = NULL;
  struct events ev;
  char *used = NULL;
  double killed, took;

  bad_lists();

  list[0] = a;
  list[1] = b;
  o.servers = list;
  o.server_count = 2;
  o.reconnect_delay_ms = 500;
  snprintf(want, sizeof want, "http://%s", a);
  /* servers_in_order (version 3): every client starts at A, the first of
   * the list, where the agent is. */
  o.servers_in_order = true;
  for (int tries = 0; tries < 5; tries++) {
    if (c != NULL)
      cmdop_client_free(c);
    events_init(&ev);
    CHECK_OK(cmdop_local_new(NULL, 0, NULL, &o, &c));
    events_install(c, &ev);
    CHECK_OK(cmdop_connect(c));
    CHECK(events_wait(&ev, &ev.connects, 1, 5000) == 1);
    used = server_in_use(c);
    CHECK(used != NULL && strcmp(used, want) == 0);
    free(used);
  }
  CHECK_OK(wait_set_machine(c, machine, 20000));
  CHECK(echo_until_ok(c, machine, "through-a", 20000));

  /* kill -9 of A: the client and the agent move to B. */
  killed = now_ms();
  CHECK(server_ctl_dir("server-kill", dir_a) == 0);
  CHECK(echo_until_ok(c, machine, "through-b", 60000));
  took = now_ms() - killed;
  printf("failover: kill -9 of the server in use -> first successful execute after %.0f ms\n", took);
  CHECK(events_wait(&ev, &ev.connects, 2, 10000) == 2);
  CHECK(events_get(&ev, &ev.disconnects) == 1);
  CHECK(events_get(&ev, &ev.first_will_reconnect) == 1);
  used = server_in_use(c);
  snprintf(want, sizeof want, "http://%s", b);
  CHECK(used != NULL && strcmp(used, want) == 0);
  free(used);
  cmdop_client_free(c);
  c = NULL;

  /* A is dead from the start now: a new client takes B at once, whichever
   * it tries first. */
  events_init(&ev);
  CHECK_OK(cmdop_local_new(NULL, 0, NULL, &o, &c));
  events_install(c, &ev);
  CHECK_OK(cmdop_connect(c));
  used = server_in_use(c);
  CHECK(used != NULL && strcmp(used, want) == 0);
  free(used);
  CHECK(echo_until_ok(c, machine, "dead-first", 20000));
  CHECK(events_get(&ev, &ev.connects) == 1 && events_get(&ev, &ev.disconnects) == 0);
  cmdop_client_free(c);
  return check_report();
}
