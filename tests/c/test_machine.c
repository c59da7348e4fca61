/*
 * Machine selection on a workspace with agents alpha-one, alpha-two and
 * bravo-host (`cmdop server` + three `cmdop agent`s, see run.sh): exact and
 * partial hostnames, unknown (NOT_FOUND), ambiguous (AMBIGUOUS listing the
 * matches), by machine id, switching between machines mid-session, and
 * listing the machines by label selector and host list
 * (cmdop_list_machines).
 * Each agent exports CMDOP_TEST_AGENT=<its hostname>, so a command shows
 * which machine ran it.
 */
#include "check.h"

/* Run `echo $CMDOP_TEST_AGENT` and check which agent answered. */
static void expect_agent(cmdop_client *c, const char *want, int line) {
  cmdop_exec_result *r = NULL;
  const uint8_t *p;
  size_t len = 0;
  char expected[128];
  cmdop_status s = cmdop_execute(c, "echo $CMDOP_TEST_AGENT", 0, &r);
  snprintf(expected, sizeof expected, "%s\n", want);
  p = cmdop_exec_result_stdout(r, &len);
  check_count++;
  if (s != CMDOP_STATUS_OK || len != strlen(expected) || memcmp(p, expected, len) != 0)
    check_fail(__FILE__, line, "expected agent %s, got status %s output \"%.*s\" (%s)", want,
               cmdop_status_str((int)s), (int)len, p ? (const char *)p : "", cmdop_last_error_message());
  cmdop_exec_result_free(r);
}

int main(void) {
  const char *host = env_required("CMDOP_HOST");
  uint16_t port = (uint16_t)strtol(env_required("CMDOP_PORT"), NULL, 10);
  const char *id_alpha_two = env_required("CMDOP_TEST_ID_ALPHA_TWO");
  const char *id_bravo = env_required("CMDOP_TEST_ID_BRAVO");
  const char *id_charlie = env_required("CMDOP_TEST_ID_CHARLIE");
  cmdop_options o = test_local_options(10000);
  cmdop_client *c = NULL;

  CHECK_OK(cmdop_local_new(host, port, NULL, &o, &c));
  CHECK_OK(cmdop_connect(c));

  /* Agents dial in asynchronously: wait for each. */
  CHECK_OK(wait_set_machine(c, "alpha-two", 15000));
  CHECK_OK(wait_set_machine(c, "bravo-host", 15000));
  CHECK_OK(wait_set_machine(c, "alpha-one", 15000));

  /* No machine selected yet on a fresh client: NOT_FOUND, saying what to do. */
  {
    cmdop_client *fresh = NULL;
    cmdop_exec_result *r = NULL;
    CHECK_OK(cmdop_local_new(host, port, NULL, &o, &fresh));
    CHECK_OK(cmdop_connect(fresh));
    CHECK_STATUS(cmdop_execute(fresh, "true", 0, &r), CMDOP_STATUS_NOT_FOUND);
    CHECK_ERROR_MENTIONS("select one"); /* core messages name no C function */
    cmdop_client_free(fresh);
  }

  /* Exact hostname. */
  CHECK_OK(cmdop_set_machine(c, "alpha-one"));
  expect_agent(c, "alpha-one", __LINE__);
  CHECK_OK(cmdop_set_machine(c, "alpha-two"));
  expect_agent(c, "alpha-two", __LINE__);

  /* Unique case-insensitive substring. */
  CHECK_OK(cmdop_set_machine(c, "BRAVO"));
  expect_agent(c, "bravo-host", __LINE__);
  CHECK_OK(cmdop_set_machine(c, "ha-on"));
  expect_agent(c, "alpha-one", __LINE__);

  /* Ambiguous: the message lists every match; the selection is unchanged. */
  CHECK_STATUS(cmdop_set_machine(c, "alpha"), CMDOP_STATUS_AMBIGUOUS);
  CHECK_ERROR_MENTIONS("alpha-one");
  CHECK_ERROR_MENTIONS("alpha-two");
  expect_agent(c, "alpha-one", __LINE__);
  CHECK_STATUS(cmdop_set_machine(c, "-"), CMDOP_STATUS_AMBIGUOUS);
  CHECK_ERROR_MENTIONS("bravo-host");

  /* Unknown, and a machine of another workspace: NOT_FOUND. */
  CHECK_STATUS(cmdop_set_machine(c, "zulu"), CMDOP_STATUS_NOT_FOUND);
  CHECK_ERROR_MENTIONS("zulu");
  CHECK_STATUS(cmdop_set_machine(c, "charlie-host"), CMDOP_STATUS_NOT_FOUND);
  expect_agent(c, "alpha-one", __LINE__);

  /* By machine id. */
  CHECK_OK(cmdop_set_machine_id(c, id_bravo));
  expect_agent(c, "bravo-host", __LINE__);
  CHECK_OK(cmdop_set_machine_id(c, id_alpha_two));
  expect_agent(c, "alpha-two", __LINE__);
  CHECK_STATUS(cmdop_set_machine_id(c, "mach_0000000000000000"), CMDOP_STATUS_NOT_FOUND);
  CHECK_STATUS(cmdop_set_machine_id(c, id_charlie), CMDOP_STATUS_NOT_FOUND);
  CHECK_STATUS(cmdop_set_machine_id(c, ""), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cmdop_set_machine(c, ""), CMDOP_STATUS_INVALID_ARGUMENT);

  /* Switching back and forth mid-session, files follow the machine too. */
  {
    int i;
    for (i = 0; i < 3; i++) {
      CHECK_OK(cmdop_set_machine(c, "alpha-one"));
      expect_agent(c, "alpha-one", __LINE__);
      CHECK_OK(cmdop_set_machine_id(c, id_bravo));
      expect_agent(c, "bravo-host", __LINE__);
    }
    {
      cmdop_file_list *l = NULL;
      CHECK_OK(cmdop_list_files(c, "/", &l));
      CHECK(cmdop_file_list_count(l) > 0);
      cmdop_file_list_free(l);
    }
  }

  /* The fleet: every machine of the workspace, sorted by hostname, with
   * ids that select them and facts as labels. */
  {
    cmdop_machine_list *l = NULL;
    const cmdop_machine *m;
    size_t i;
    CHECK_OK(cmdop_list_machines(c, NULL, NULL, &l));
    CHECK(cmdop_machine_list_count(l) == 3);
    m = cmdop_machine_list_get(l, 0);
    CHECK(m != NULL && strcmp(cmdop_machine_hostname(m), "alpha-one") == 0);
    CHECK(cmdop_machine_online(m));
    CHECK(strncmp(cmdop_machine_id(m), "mach_", 5) == 0);
    CHECK(cmdop_machine_label(m, "cmdop.io/hostname") != NULL &&
          strcmp(cmdop_machine_label(m, "cmdop.io/hostname"), "alpha-one") == 0);
    CHECK(cmdop_machine_label(m, "no-such-label") == NULL);
    CHECK(cmdop_machine_label(m, NULL) == NULL);
    CHECK(cmdop_machine_cpu_count(m) > 0 && cmdop_machine_memory_bytes(m) > 0);
    CHECK(strcmp(cmdop_machine_os(m), "linux") == 0);
    CHECK(cmdop_machine_label_count(m) > 3);
    for (i = 0; i < cmdop_machine_label_count(m); i++)
      CHECK(cmdop_machine_label_key(m, i) != NULL && cmdop_machine_label_value(m, i) != NULL);
    CHECK(cmdop_machine_label_key(m, 9999) == NULL);
    CHECK(cmdop_machine_list_get(l, 3) == NULL);
    /* A listed id selects its machine. */
    m = cmdop_machine_list_get(l, 2);
    CHECK(m != NULL && strcmp(cmdop_machine_hostname(m), "bravo-host") == 0);
    if (m) {
      CHECK(strcmp(cmdop_machine_id(m), id_bravo) == 0);
      CHECK_OK(cmdop_set_machine_id(c, cmdop_machine_id(m)));
      expect_agent(c, "bravo-host", __LINE__);
    }
    cmdop_machine_list_free(l);
    l = NULL;
    CHECK_OK(cmdop_list_machines(c, "cmdop.io/status=online", "alpha-*", &l));
    CHECK(cmdop_machine_list_count(l) == 2);
    cmdop_machine_list_free(l);
    l = NULL;
    CHECK_OK(cmdop_list_machines(c, "cmdop.io/hostname in (bravo-host)", "", &l));
    CHECK(cmdop_machine_list_count(l) == 1);
    cmdop_machine_list_free(l);
    l = NULL;
    /* A bad selector: INVALID_ARGUMENT saying what is wrong. */
    CHECK_STATUS(cmdop_list_machines(c, "env=", NULL, &l), CMDOP_STATUS_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("a value is missing");
    CHECK(l == NULL);
    CHECK_STATUS(cmdop_list_machines(c, NULL, NULL, NULL), CMDOP_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cmdop_list_machines(NULL, NULL, NULL, &l), CMDOP_STATUS_INVALID_ARGUMENT);
    cmdop_machine_list_free(NULL);
    CHECK(cmdop_machine_list_count(NULL) == 0 && cmdop_machine_id(NULL) == NULL);
  }

  /* Sessions name their machine's id: the active one and every listed
   * one, and the id selects that machine. */
  {
    cmdop_session *s = NULL;
    cmdop_session_list *l = NULL;
    size_t i, with_id = 0;
    CHECK_OK(cmdop_get_active_session(c, "bravo-host", &s));
    CHECK(s != NULL && strcmp(cmdop_session_machine_id(s), id_bravo) == 0);
    cmdop_session_free(s);
    CHECK_OK(cmdop_list_sessions(c, &l));
    for (i = 0; i < cmdop_session_list_count(l); i++) {
      const cmdop_session *e = cmdop_session_list_get(l, i);
      if (strcmp(cmdop_session_status(e), "connected") != 0)
        continue;
      CHECK(strncmp(cmdop_session_machine_id(e), "mach_", 5) == 0);
      with_id++;
      if (strcmp(cmdop_session_hostname(e), "alpha-one") == 0) {
        CHECK_OK(cmdop_set_machine_id(c, cmdop_session_machine_id(e)));
        expect_agent(c, "alpha-one", __LINE__);
      }
    }
    CHECK(with_id == 3);
    cmdop_session_list_free(l);
    CHECK(cmdop_session_machine_id(NULL) == NULL);
  }

  cmdop_client_free(c);
  return check_report();
}
