/*
 * A scoped key from C: a w1 key allowed only `exec` on machines labelled
 * team=alpha (alpha-one). It runs commands there, gets
 * CMDOP_STATUS_NOT_ALLOWED naming what is missing for a file read and a
 * session listing, and cannot see bravo-host at all (NOT_FOUND, as for a
 * machine that does not exist).
 */
#include "check.h"

int main(void) {
  const char *host = env_required("CMDOP_HOST");
  uint16_t port = (uint16_t)strtol(env_required("CMDOP_PORT"), NULL, 10);
  const char *key = env_required("CMDOP_TEST_KEY_SCOPED");
  cmdop_options o = test_local_options(10000);
  cmdop_client *c = NULL;
  cmdop_exec_result *r = NULL;
  cmdop_bytes *content = NULL;
  cmdop_session_list *sessions = NULL;
  size_t len = 0;
  const uint8_t *out;

  CHECK_OK(cmdop_local_new(host, port, key, &o, &c));
  CHECK_OK(cmdop_connect(c));
  /* The admin label reaches the server within its revocation poll. */
  CHECK_OK(wait_set_machine(c, "alpha-one", 15000));

  RUN(c, "echo in-scope", 0, &r);
  out = cmdop_exec_result_stdout(r, &len);
  CHECK(len == strlen("in-scope\n") && memcmp(out, "in-scope\n", len) == 0);
  cmdop_exec_result_free(r);

  CHECK_STATUS(cmdop_read_file(c, "/etc/hostname", &content), CMDOP_STATUS_NOT_ALLOWED);
  CHECK(content == NULL);
  CHECK_ERROR_MENTIONS("may not read files");
  CHECK(strcmp(cmdop_status_str(CMDOP_STATUS_NOT_ALLOWED), "not allowed by the API key's scope") == 0);

  CHECK_STATUS(cmdop_list_sessions(c, &sessions), CMDOP_STATUS_NOT_ALLOWED);
  CHECK(sessions == NULL);
  CHECK_ERROR_MENTIONS("may not list sessions");

  /* Out of scope: invisible, not refused. */
  CHECK_STATUS(cmdop_set_machine(c, "bravo-host"), CMDOP_STATUS_NOT_FOUND);
  CHECK_STATUS(cmdop_set_machine(c, "no-such-host"), CMDOP_STATUS_NOT_FOUND);

  cmdop_client_free(c);
  return check_report();
}
