/*
 * Smoke test of the C boundary without a server: option versions, NULL and
 * bad UTF-8 handling, error messages, and a connection refused within the
 * timeout. Build and run with tests/c_smoke/run.sh.
 */
#include "cmdop.h"
#include "cmdop.h" /* the include guard must make a second include harmless */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <time.h>
#include <unistd.h>

static int failures = 0;

#define CHECK(cond)                                                         \
  do {                                                                      \
    if (!(cond)) {                                                          \
      fprintf(stderr, "%s:%d: check failed: %s (last error: %s)\n",         \
              __FILE__, __LINE__, #cond, cmdop_last_error_message());       \
      failures++;                                                           \
    }                                                                       \
  } while (0)

/* on_error runs on the library's event thread: a blocking call made from
 * it must fail with IN_CALLBACK instead of deadlocking. */
static volatile int errors_seen = 0;
static volatile int nested_status = -1;
static void on_error(void *user_data, cmdop_status status, const char *message) {
  (void)status;
  (void)message;
  nested_status = (int)cmdop_connect((cmdop_client *)user_data);
  errors_seen++;
}

static volatile int freed = 0;
static void free_user_data(void *user_data) {
  (void)user_data;
  freed++;
}

static double now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/* A loopback port with nothing listening: bind, read the port, close. */
static unsigned short closed_port(void) {
  struct sockaddr_in a;
  socklen_t len = sizeof a;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  memset(&a, 0, sizeof a);
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) != 0 ||
      getsockname(fd, (struct sockaddr *)&a, &len) != 0) {
    perror("closed_port");
    exit(2);
  }
  close(fd);
  return ntohs(a.sin_port);
}

int main(void) {
  cmdop_client *client = NULL;
  cmdop_exec_result *res = NULL;
  cmdop_local_options lo = CMDOP_LOCAL_OPTIONS_INIT;
  cmdop_local_options li;
  cmdop_remote_options ro = CMDOP_REMOTE_OPTIONS_INIT;
  cmdop_remote_options ri;
  cmdop_status st;
  double t0, elapsed;

  /* Versions and static strings. */
  CHECK(cmdop_abi_version() == CMDOP_ABI_VERSION);
  CHECK(strlen(cmdop_version()) > 0);
  CHECK(strcmp(cmdop_status_str(CMDOP_STATUS_TIMEOUT), "timed out") == 0);
  CHECK(strcmp(cmdop_status_str(9999), "unknown status") == 0);
  CHECK(cmdop_last_error_message() != NULL);

  /* INIT macros agree with the init functions. */
  CHECK(cmdop_local_options_init(&li) == CMDOP_STATUS_OK);
  CHECK(li.version == lo.version && li.timeout_ms == lo.timeout_ms &&
        li.tls == lo.tls && li.max_reconnect_attempts == lo.max_reconnect_attempts &&
        li.reconnect_delay_ms == lo.reconnect_delay_ms && li.debug == lo.debug);
  CHECK(cmdop_remote_options_init(&ri) == CMDOP_STATUS_OK);
  CHECK(ri.version == ro.version && ri.timeout_ms == ro.timeout_ms &&
        ri.insecure == ro.insecure && ri.auto_refresh == ro.auto_refresh &&
        ri.max_reconnect_delay_ms == ro.max_reconnect_delay_ms);
  CHECK(cmdop_local_options_init(NULL) == CMDOP_STATUS_INVALID_ARGUMENT);

  /* NULLs and bad input are INVALID_ARGUMENT with a message. */
  CHECK(cmdop_local_new(NULL, 1, NULL, &client) == CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(client == NULL);
  CHECK(strstr(cmdop_last_error_message(), "host") != NULL);
  CHECK(cmdop_local_new("127.0.0.1", 1, NULL, NULL) == CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(cmdop_local_new("\xff\xfe", 1, NULL, &client) == CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(strstr(cmdop_last_error_message(), "UTF-8") != NULL);
  CHECK(cmdop_local_new("127.0.0.1", 0, NULL, &client) == CMDOP_STATUS_INVALID_ARGUMENT);
  lo.version = 99;
  CHECK(cmdop_local_new("127.0.0.1", 1, &lo, &client) == CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(strstr(cmdop_last_error_message(), "newer") != NULL);
  lo.version = CMDOP_LOCAL_OPTIONS_VERSION;
  CHECK(cmdop_connect(NULL) == CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(cmdop_execute(NULL, "true", 0, &res) == CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(res == NULL);
  CHECK(cmdop_close(NULL) == CMDOP_STATUS_INVALID_ARGUMENT);
  cmdop_client_free(NULL);
  cmdop_exec_result_free(NULL);
  CHECK(cmdop_exec_result_exit_code(NULL) == -1);

  /* Remote client without a key: UNAUTHENTICATED naming the variable. */
  unsetenv("CMDOP_API_KEY");
  CHECK(cmdop_remote_new(NULL, NULL, &client) == CMDOP_STATUS_UNAUTHENTICATED);
  CHECK(strstr(cmdop_last_error_message(), "CMDOP_API_KEY") != NULL);
  CHECK(cmdop_remote_new("any-key-format", &ro, &client) == CMDOP_STATUS_OK);
  cmdop_client_free(client);
  client = NULL;

  /* Calls before connecting fail cleanly. */
  lo.timeout_ms = 2000;
  lo.auto_reconnect = false;
  CHECK(cmdop_local_new("127.0.0.1", closed_port(), &lo, &client) == CMDOP_STATUS_OK);
  CHECK(client != NULL);
  CHECK(!cmdop_is_connected(client));
  CHECK(cmdop_execute(client, "true", 0, &res) == CMDOP_STATUS_NOT_FOUND); /* no machine */
  CHECK(strstr(cmdop_last_error_message(), "cmdop_set_machine") != NULL);
  CHECK(cmdop_execute(client, NULL, 0, &res) == CMDOP_STATUS_INVALID_ARGUMENT);

  CHECK(cmdop_on_error(client, on_error, client, free_user_data) == CMDOP_STATUS_OK);

  /* Connecting to a closed port: UNAVAILABLE, well within the timeout. */
  t0 = now_ms();
  st = cmdop_connect(client);
  elapsed = now_ms() - t0;
  CHECK(st == CMDOP_STATUS_UNAVAILABLE);
  CHECK(strstr(cmdop_last_error_message(), "cannot connect") != NULL);
  CHECK(elapsed < 2500.0);
  CHECK(!cmdop_is_connected(client));
  CHECK(cmdop_close(client) == CMDOP_STATUS_OK);
  CHECK(cmdop_close(client) == CMDOP_STATUS_OK); /* double close is fine */
  for (int i = 0; i < 200 && errors_seen == 0; i++) {
    struct timespec pause = {0, 10000000L};
    nanosleep(&pause, NULL);
  }
  CHECK(errors_seen > 0);
  CHECK(nested_status == CMDOP_STATUS_IN_CALLBACK);
  cmdop_client_free(client);
  for (int i = 0; i < 200 && freed == 0; i++) {
    struct timespec pause = {0, 10000000L};
    nanosleep(&pause, NULL);
  }
  CHECK(freed == 1); /* free_user_data ran once, after the last callback */

  if (failures) {
    fprintf(stderr, "smoke: %d check(s) failed\n", failures);
    return 1;
  }
  printf("smoke: ok (connect refused in %.0f ms)\n", elapsed);
  return 0;
}
