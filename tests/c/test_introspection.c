/*
 * Introspection: cmdop_is_connected through the lifecycle and
 * cmdop_connection_info (server, TLS, latency, version, native exec).
 * Runs against both stacks; CMDOP_TEST_EXPECT_NATIVE says which.
 */
#include "check.h"

int main(void) {
  const char *server = env_required("CMDOP_SERVER");
  int expect_native = atoi(env_required("CMDOP_TEST_EXPECT_NATIVE"));
  const char *host = env_required("CMDOP_HOST");
  uint16_t port = (uint16_t)strtol(env_required("CMDOP_PORT"), NULL, 10);
  cmdop_options o = test_local_options(10000);
  cmdop_client *c = NULL;
  cmdop_connection_info *info = NULL;
  int i;

  CHECK_OK(cmdop_local_new(host, port, NULL, &o, &c));
  CHECK(!cmdop_is_connected(c));
  CHECK(!cmdop_is_connected(NULL));

  /* Before connecting: describes the target, not connected. */
  CHECK_OK(cmdop_get_connection_info(c, &info));
  CHECK(info != NULL);
  CHECK(!cmdop_connection_info_connected(info));
  cmdop_connection_info_free(info);
  info = NULL;

  CHECK_OK(cmdop_connect(c));
  CHECK(cmdop_is_connected(c));
  CHECK_OK(cmdop_get_connection_info(c, &info));
  if (info) {
    const char *s = cmdop_connection_info_server(info);
    printf("server %s version \"%s\" workspace \"%s\" tls %d latency %.3f ms native_exec %d\n", s,
           cmdop_connection_info_server_version(info), cmdop_connection_info_workspace(info),
           cmdop_connection_info_tls(info), cmdop_connection_info_latency_ms(info),
           cmdop_connection_info_native_exec(info));
    CHECK(s != NULL && strstr(s, server) != NULL);
    CHECK(!cmdop_connection_info_tls(info));
    CHECK(cmdop_connection_info_connected(info));
    CHECK(cmdop_connection_info_latency_ms(info) > 0.0);
    CHECK(cmdop_connection_info_latency_ms(info) < 5000.0);
    CHECK(cmdop_connection_info_server_version(info) != NULL);
    if (expect_native) CHECK(cmdop_connection_info_server_version(info)[0] != '\0');
    CHECK(cmdop_connection_info_workspace(info) != NULL);
    CHECK(cmdop_connection_info_native_exec(info) == (expect_native != 0));
    /* Capabilities: the extension's list (cmdop dev serves plaintext, so
     * side connections too), none from an official-only server. */
    {
      size_t n = cmdop_connection_info_capability_count(info), k;
      printf("capabilities:");
      for (k = 0; k < n; k++) printf(" %s", cmdop_connection_info_capability_get(info, k));
      printf("\n");
      CHECK(cmdop_connection_info_capability_get(info, n) == NULL);
      CHECK(cmdop_connection_info_has_capability(info, CMDOP_CAPABILITY_EXEC) == (expect_native != 0));
      CHECK(cmdop_connection_info_has_capability(info, CMDOP_CAPABILITY_FILES) == (expect_native != 0));
      CHECK(cmdop_connection_info_has_capability(info, CMDOP_CAPABILITY_MACHINE_ID) == (expect_native != 0));
      CHECK(cmdop_connection_info_has_capability(info, CMDOP_CAPABILITY_TOKENS) == (expect_native != 0));
      CHECK(cmdop_connection_info_has_capability(info, CMDOP_CAPABILITY_SIDE_CONNECTIONS) ==
            (expect_native != 0));
      CHECK(!cmdop_connection_info_has_capability(info, "no-such.v1"));
      CHECK(!cmdop_connection_info_has_capability(info, "exec"));
      CHECK(!cmdop_connection_info_has_capability(info, NULL));
      if (expect_native) {
        CHECK(n >= 5);
        CHECK(n > 0 && strcmp(cmdop_connection_info_capability_get(info, 0), "") != 0);
      } else {
        CHECK(n == 0);
      }
    }
  }
  cmdop_connection_info_free(info);
  info = NULL;

  /* Latency is measured each time (a fresh round trip). */
  for (i = 0; i < 5; i++) {
    CHECK_OK(cmdop_get_connection_info(c, &info));
    CHECK(cmdop_connection_info_latency_ms(info) > 0.0);
    cmdop_connection_info_free(info);
    info = NULL;
  }

  /* The result of execute agrees with the capability. */
  {
    cmdop_exec_result *r = NULL;
    CHECK_OK(cmdop_set_machine(c, env_required("CMDOP_TEST_HOSTNAME")));
    CHECK_OK(cmdop_execute(c, "true", 0, &r));
    CHECK(cmdop_exec_result_native(r) == (expect_native != 0));
    cmdop_exec_result_free(r);
  }

  CHECK_OK(cmdop_close(c));
  CHECK(!cmdop_is_connected(c));
  CHECK_OK(cmdop_get_connection_info(c, &info));
  CHECK(info != NULL && !cmdop_connection_info_connected(info));
  cmdop_connection_info_free(info);

  /* Accessors on NULL. */
  CHECK(cmdop_connection_info_server(NULL) == NULL);
  CHECK(!cmdop_connection_info_tls(NULL));
  CHECK(!cmdop_connection_info_connected(NULL));
  CHECK(!cmdop_connection_info_native_exec(NULL));
  CHECK(cmdop_connection_info_capability_count(NULL) == 0);
  CHECK(cmdop_connection_info_capability_get(NULL, 0) == NULL);
  CHECK(!cmdop_connection_info_has_capability(NULL, CMDOP_CAPABILITY_EXEC));
  cmdop_connection_info_free(NULL);

  cmdop_client_free(c);
  return check_report();
}
