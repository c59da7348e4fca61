/*
 * Several workspaces at once: two clients with the keys of workspaces w1
 * (alpha-one, alpha-two, bravo-host) and w2 (charlie-host), used at the
 * same time from two threads; each sees only its own machines.
 */
#include "check.h"

#include <pthread.h>

struct worker {
  const char *key;
  const char *machine;
  int ok; /* executes that answered the right agent */
};

static void *work(void *arg) {
  struct worker *w = arg;
  cmdop_options o = test_local_options(10000);
  cmdop_client *c = NULL;
  char want[64];
  int i;

  snprintf(want, sizeof want, "%s\n", w->machine);
  if (cmdop_local_new(env_required("CMDOP_HOST"), (uint16_t)atoi(env_required("CMDOP_PORT")), w->key, &o, &c) !=
          CMDOP_STATUS_OK ||
      cmdop_connect(c) != CMDOP_STATUS_OK || wait_set_machine(c, w->machine, 15000) != CMDOP_STATUS_OK) {
    fprintf(stderr, "worker %s: %s\n", w->machine, cmdop_last_error_message());
    cmdop_client_free(c);
    return NULL;
  }
  for (i = 0; i < 10; i++) {
    cmdop_exec_result *r = NULL;
    size_t len = 0;
    const uint8_t *p;
    if (cmdop_execute(c, "echo $CMDOP_TEST_AGENT", 0, &r) == CMDOP_STATUS_OK) {
      p = cmdop_exec_result_stdout(r, &len);
      if (len == strlen(want) && memcmp(p, want, len) == 0) w->ok++;
    }
    cmdop_exec_result_free(r);
  }
  cmdop_client_free(c);
  return NULL;
}

/* Hostnames of all sessions `c` can see, space-separated. */
static void visible_hosts(cmdop_client *c, char *buf, size_t cap) {
  cmdop_session_list *l = NULL;
  size_t i;
  buf[0] = '\0';
  CHECK_OK(cmdop_list_sessions(c, &l));
  for (i = 0; i < cmdop_session_list_count(l); i++) {
    size_t used = strlen(buf);
    snprintf(buf + used, cap - used, "%s ", cmdop_session_hostname(cmdop_session_list_get(l, i)));
  }
  cmdop_session_list_free(l);
}

int main(void) {
  const char *host = env_required("CMDOP_HOST");
  uint16_t port = (uint16_t)strtol(env_required("CMDOP_PORT"), NULL, 10);
  const char *k1 = env_required("CMDOP_API_KEY");
  const char *k2 = env_required("CMDOP_TEST_KEY_W2");
  cmdop_options o1 = test_local_options(10000), o2 = test_local_options(10000);
  cmdop_client *c1 = NULL, *c2 = NULL;
  cmdop_connection_info *info = NULL;
  char hosts[1024];

  CHECK_OK(cmdop_local_new(host, port, k1, &o1, &c1));
  CHECK_OK(cmdop_local_new(host, port, k2, &o2, &c2));
  CHECK_OK(cmdop_connect(c1));
  CHECK_OK(cmdop_connect(c2));
  CHECK_OK(wait_set_machine(c1, "alpha-one", 15000));
  CHECK_OK(wait_set_machine(c2, "charlie-host", 15000));

  CHECK_OK(cmdop_get_connection_info(c1, &info));
  CHECK(strcmp(cmdop_connection_info_workspace(info), "w1") == 0);
  cmdop_connection_info_free(info);
  CHECK_OK(cmdop_get_connection_info(c2, &info));
  CHECK(strcmp(cmdop_connection_info_workspace(info), "w2") == 0);
  cmdop_connection_info_free(info);

  visible_hosts(c1, hosts, sizeof hosts);
  CHECK(strstr(hosts, "alpha-one") && strstr(hosts, "alpha-two") && strstr(hosts, "bravo-host"));
  CHECK(strstr(hosts, "charlie-host") == NULL);
  visible_hosts(c2, hosts, sizeof hosts);
  CHECK(strcmp(hosts, "charlie-host ") == 0);

  CHECK_STATUS(cmdop_set_machine(c1, "charlie-host"), CMDOP_STATUS_NOT_FOUND);
  CHECK_STATUS(cmdop_set_machine(c2, "alpha-one"), CMDOP_STATUS_NOT_FOUND);
  CHECK_STATUS(cmdop_set_machine(c2, "alpha"), CMDOP_STATUS_NOT_FOUND);

  /* Closing one client leaves the other untouched. */
  CHECK_OK(cmdop_close(c1));
  CHECK(cmdop_is_connected(c2));
  {
    cmdop_exec_result *r = NULL;
    CHECK_OK(cmdop_execute(c2, "true", 0, &r));
    cmdop_exec_result_free(r);
  }
  cmdop_client_free(c1);
  cmdop_client_free(c2);

  /* Two workspaces in parallel, one client per thread. */
  {
    struct worker w[2] = {{NULL, "bravo-host", 0}, {NULL, "charlie-host", 0}};
    pthread_t t[2];
    int i;
    w[0].key = k1;
    w[1].key = k2;
    for (i = 0; i < 2; i++) CHECK(pthread_create(&t[i], NULL, work, &w[i]) == 0);
    for (i = 0; i < 2; i++) pthread_join(t[i], NULL);
    CHECK(w[0].ok == 10);
    CHECK(w[1].ok == 10);
  }
  return check_report();
}
