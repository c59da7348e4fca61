/*
 * OAuth tokens (cmdop_remote_new_oauth): an expired access token is
 * refreshed transparently and the call retried, the token callback hands
 * the new pair over; without auto_refresh, or with a refresh token already
 * used, the call fails UNAUTHENTICATED. run.sh mints the pairs with the
 * IssueToken RPC: CMDOP_TEST_ACCESS/REFRESH (access valid 2 s) and
 * CMDOP_TEST_ACCESS2/REFRESH2 (1 s).
 */
#include "check.h"

#include <pthread.h>

struct tokens {
  pthread_mutex_t mu;
  int calls;
  char access[512], refresh[512];
};

static void on_tokens(void *ud, const char *access, const char *refresh) {
  struct tokens *t = ud;
  pthread_mutex_lock(&t->mu);
  t->calls++;
  snprintf(t->access, sizeof t->access, "%s", access ? access : "");
  snprintf(t->refresh, sizeof t->refresh, "%s", refresh ? refresh : "");
  pthread_mutex_unlock(&t->mu);
}

static int token_calls(struct tokens *t) {
  int n;
  pthread_mutex_lock(&t->mu);
  n = t->calls;
  pthread_mutex_unlock(&t->mu);
  return n;
}

int main(void) {
  const char *access = env_required("CMDOP_TEST_ACCESS");
  const char *refresh = env_required("CMDOP_TEST_REFRESH");
  const char *access2 = env_required("CMDOP_TEST_ACCESS2");
  const char *refresh2 = env_required("CMDOP_TEST_REFRESH2");
  static struct tokens tk;
  cmdop_options r;
  cmdop_client *c = NULL;
  cmdop_exec_result *res = NULL;
  cmdop_session_list *l = NULL;
  double deadline;

  pthread_mutex_init(&tk.mu, NULL);
  cmdop_options_init(&r, CMDOP_OPTIONS_VERSION);
  r.server = env_required("CMDOP_SERVER");
  r.tls = CMDOP_TLS_OFF;
  r.timeout_ms = 10000;

  /* Bad token arguments. */
  CHECK_STATUS(cmdop_remote_new_oauth("", refresh, &r, &c), CMDOP_STATUS_UNAUTHENTICATED);
  CHECK(c == NULL);
  CHECK_STATUS(cmdop_remote_new_oauth(access, "", &r, &c), CMDOP_STATUS_UNAUTHENTICATED);
  CHECK_STATUS(cmdop_remote_new_oauth(NULL, refresh, &r, &c), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cmdop_remote_new_oauth(access, NULL, &r, &c), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cmdop_remote_new_oauth(access, refresh, &r, NULL), CMDOP_STATUS_INVALID_ARGUMENT);

  /* Connect with a valid access token; refresh happens on expiry. */
  CHECK_OK(cmdop_remote_new_oauth(access, refresh, &r, &c));
  CHECK_OK(cmdop_on_token_refresh(c, on_tokens, &tk, NULL));
  CHECK_OK(cmdop_connect(c));
  CHECK_OK(wait_set_machine(c, "alpha-one", 10000));
  CHECK_OK(cmdop_execute(c, "true", 0, &res));
  cmdop_exec_result_free(res);
  res = NULL;
  CHECK(token_calls(&tk) == 0);

  sleep_ms(2600); /* the access token is expired now */
  CHECK_OK(cmdop_list_sessions(c, &l));
  CHECK(cmdop_session_list_count(l) >= 1);
  cmdop_session_list_free(l);
  deadline = now_ms() + 3000; /* the callback runs on the event thread */
  while (token_calls(&tk) == 0 && now_ms() < deadline) sleep_ms(20);
  CHECK(token_calls(&tk) == 1);
  pthread_mutex_lock(&tk.mu);
  CHECK(tk.access[0] != '\0' && strcmp(tk.access, access) != 0);
  CHECK(tk.refresh[0] != '\0' && strcmp(tk.refresh, refresh) != 0);
  pthread_mutex_unlock(&tk.mu);

  /* Later calls use the new token without refreshing again. */
  CHECK_OK(cmdop_execute(c, "echo refreshed", 0, &res));
  cmdop_exec_result_free(res);
  res = NULL;
  CHECK_OK(cmdop_execute(c, "true", 0, &res));
  cmdop_exec_result_free(res);
  res = NULL;
  CHECK(token_calls(&tk) == 1);
  cmdop_client_free(c);
  c = NULL;

  /* auto_refresh off: an expired access token is final. */
  r.auto_refresh = false;
  CHECK_OK(cmdop_remote_new_oauth(access2, refresh2, &r, &c));
  sleep_ms(200); /* its access token lived 1 s, minted before this test */
  {
    cmdop_status s = cmdop_connect(c);
    if (s == CMDOP_STATUS_OK) s = cmdop_list_sessions(c, &l);
    CHECK(s == CMDOP_STATUS_UNAUTHENTICATED);
    CHECK(cmdop_last_error_message()[0] != '\0');
    CHECK(strstr(cmdop_last_error_message(), access2) == NULL);
  }
  cmdop_client_free(c);
  c = NULL;

  /* A refresh token that was already used: refusing is the server's
   * rotation rule, and the library reports it as UNAUTHENTICATED. */
  r.auto_refresh = true;
  CHECK_OK(cmdop_remote_new_oauth(access, refresh, &r, &c));
  {
    cmdop_status s = cmdop_connect(c);
    if (s == CMDOP_STATUS_OK) s = cmdop_list_sessions(c, &l);
    CHECK(s == CMDOP_STATUS_UNAUTHENTICATED);
    CHECK(strstr(cmdop_last_error_message(), refresh) == NULL);
  }
  cmdop_client_free(c);

  CHECK_STATUS(cmdop_on_token_refresh(NULL, on_tokens, NULL, NULL), CMDOP_STATUS_INVALID_ARGUMENT);
  pthread_mutex_destroy(&tk.mu);
  return check_report();
}
