/*
 * The debug log callback: receives request/response summaries and state
 * changes from clients created with `debug`, honours its level, can be
 * removed, and never shows the API key; its user_data is finalised once
 * when replaced; levels outside cmdop_log_level are refused (an int is
 * taken, so no undefined behaviour: run under UBSan). Native stack.
 */
#include "check.h"

#include <pthread.h>

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static int messages, debug_messages, above_level, leaks, freed;
static const char *secret;

static void on_log(void *ud, cmdop_log_level level, const char *message) {
  int max = *(const int *)ud;
  pthread_mutex_lock(&mu);
  messages++;
  if (level == CMDOP_LOG_LEVEL_DEBUG) debug_messages++;
  if ((int)level > max || level == CMDOP_LOG_LEVEL_OFF) above_level++;
  if (message == NULL || (secret && strstr(message, secret))) {
    leaks++;
    fprintf(stderr, "log message shows the key: %s\n", message ? message : "(null)");
  }
  pthread_mutex_unlock(&mu);
}

static void on_free(void *ud) {
  (void)ud;
  pthread_mutex_lock(&mu);
  freed++;
  pthread_mutex_unlock(&mu);
}

static int get(int *v) {
  int x;
  pthread_mutex_lock(&mu);
  x = *v;
  pthread_mutex_unlock(&mu);
  return x;
}

static void reset(void) {
  pthread_mutex_lock(&mu);
  messages = debug_messages = above_level = 0;
  pthread_mutex_unlock(&mu);
}

/* Connect a client, run a command, list files, close, free. */
static void workload(bool debug) {
  cmdop_options o = test_local_options(10000);
  cmdop_client *c;
  cmdop_exec_result *r = NULL;
  cmdop_file_list *l = NULL;
  o.debug = debug;
  c = test_connect(&o);
  CHECK_OK(cmdop_execute(c, "echo logged", 0, &r));
  cmdop_exec_result_free(r);
  CHECK_OK(cmdop_list_files(c, "/", &l));
  cmdop_file_list_free(l);
  CHECK_STATUS(cmdop_set_machine(c, "no-such-machine"), CMDOP_STATUS_NOT_FOUND);
  CHECK_OK(cmdop_close(c));
  cmdop_client_free(c);
  sleep_ms(200); /* late messages from library threads */
}

int main(void) {
  const char *key = env_required("CMDOP_API_KEY");
  static int debug_level = CMDOP_LOG_LEVEL_DEBUG, warn_level = CMDOP_LOG_LEVEL_WARN;
  /* The key minus its well-known prefix: what must never appear. */
  secret = strchr(key, '_') ? strchr(key, '_') + 1 : key;

  /* Debug client, DEBUG level: summaries and state changes. */
  CHECK_OK(cmdop_on_log(CMDOP_LOG_LEVEL_DEBUG, on_log, &debug_level, NULL));
  workload(true);
  printf("debug client: %d messages, %d at debug level\n", get(&messages), get(&debug_messages));
  CHECK(get(&messages) >= 3);
  CHECK(get(&debug_messages) >= 3);
  CHECK(get(&leaks) == 0);

  /* WARN level: nothing more verbose than warnings arrives. */
  reset();
  CHECK_OK(cmdop_on_log(CMDOP_LOG_LEVEL_WARN, on_log, &warn_level, NULL));
  workload(true);
  CHECK(get(&above_level) == 0);
  CHECK(get(&debug_messages) == 0);

  /* A client without `debug` emits no debug messages. */
  reset();
  CHECK_OK(cmdop_on_log(CMDOP_LOG_LEVEL_DEBUG, on_log, &debug_level, NULL));
  workload(false);
  CHECK(get(&debug_messages) == 0);

  /* Out-of-range levels: INVALID_ARGUMENT, nothing changes, the rejected
   * user_data is not finalised, the installed callback stays. */
  CHECK_OK(cmdop_on_log(CMDOP_LOG_LEVEL_DEBUG, on_log, &debug_level, on_free));
  CHECK_STATUS(cmdop_on_log(-1, on_log, &warn_level, on_free), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(strstr(cmdop_last_error_message(), "cmdop_log_level") != NULL);
  CHECK_STATUS(cmdop_on_log(CMDOP_LOG_LEVEL_DEBUG + 1, on_log, &warn_level, on_free),
               CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cmdop_on_log(0x7fffffff, NULL, NULL, NULL), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(get(&freed) == 0);
  reset();
  workload(true);
  CHECK(get(&debug_messages) >= 3);
  /* Replacing it finalises the old user_data exactly once. */
  CHECK_OK(cmdop_on_log(CMDOP_LOG_LEVEL_WARN, on_log, &warn_level, on_free));
  CHECK(get(&freed) == 1);
  CHECK_OK(cmdop_on_log(CMDOP_LOG_LEVEL_OFF, NULL, NULL, NULL));
  CHECK(get(&freed) == 2);

  /* Removed: silence. */
  CHECK_OK(cmdop_on_log(CMDOP_LOG_LEVEL_DEBUG, NULL, NULL, NULL));
  reset();
  workload(true);
  CHECK(get(&messages) == 0);
  CHECK_OK(cmdop_on_log(CMDOP_LOG_LEVEL_OFF, on_log, &debug_level, NULL));
  workload(true);
  CHECK(get(&messages) == 0);
  CHECK_OK(cmdop_on_log(CMDOP_LOG_LEVEL_OFF, NULL, NULL, NULL));
  CHECK(get(&leaks) == 0);
  return check_report();
}
