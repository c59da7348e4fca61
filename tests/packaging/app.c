/*
 * The smallest useful libcmdop program, built by tests/packaging/run.sh
 * against an installed libcmdop (through pkg-config and through CMake).
 *
 *   app COMMAND
 *
 * Connects to the control plane at $CMDOP_HOST:$CMDOP_PORT with
 * $CMDOP_API_KEY, selects machine $CMDOP_TEST_HOSTNAME, runs COMMAND there
 * and prints its output. Exits with the command's exit code, or 100 when a
 * libcmdop call fails.
 */
#include <cmdop.h>

#include <stdio.h>
#include <stdlib.h>

static int fail(const char *what, cmdop_status st) {
  fprintf(stderr, "%s: %s: %s\n", what, cmdop_status_str((int)st), cmdop_last_error_message());
  return 100;
}

int main(int argc, char **argv) {
  const char *host = getenv("CMDOP_HOST");
  const char *port = getenv("CMDOP_PORT");
  const char *machine = getenv("CMDOP_TEST_HOSTNAME");
  cmdop_client *client = NULL;
  cmdop_exec_result *result = NULL;
  cmdop_status st;
  const uint8_t *out;
  size_t len = 0;
  int code;

  if (argc != 2 || !host || !port || !machine) {
    fprintf(stderr, "usage: app COMMAND (with CMDOP_HOST, CMDOP_PORT, CMDOP_TEST_HOSTNAME set)\n");
    return 2;
  }
  if (cmdop_abi_version() != CMDOP_ABI_VERSION) {
    fprintf(stderr, "libcmdop ABI %u, header ABI %u\n", cmdop_abi_version(), (unsigned)CMDOP_ABI_VERSION);
    return 2;
  }
  printf("libcmdop %s\n", cmdop_version());

  st = cmdop_local_new(host, (uint16_t)atoi(port), NULL, NULL, &client);
  if (st != CMDOP_STATUS_OK) return fail("cmdop_local_new", st);
  if ((st = cmdop_connect(client)) != CMDOP_STATUS_OK) code = fail("cmdop_connect", st);
  else if ((st = cmdop_set_machine(client, machine)) != CMDOP_STATUS_OK) code = fail("cmdop_set_machine", st);
  else if ((st = cmdop_execute(client, argv[1], 20000, &result)) != CMDOP_STATUS_OK) code = fail("cmdop_execute", st);
  else {
    out = cmdop_exec_result_output(result, &len);
    fwrite(out, 1, len, stdout);
    code = cmdop_exec_result_exit_code(result);
  }
  cmdop_exec_result_free(result);
  cmdop_client_free(client);
  return code;
}
