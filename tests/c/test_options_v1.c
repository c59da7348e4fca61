/*
 * A program built against the frozen version-1 options layout
 * (frozen/cmdop_options_v1.h, never edited) keeps working with the current
 * library: cmdop_options_init() writes only the version-1 bytes, the
 * constructors read only them, and a client made from them connects and
 * runs a command. The structs live in heap blocks of exactly the version-1
 * size, so ASan stops any access past them; a canary after a second copy
 * catches writes even without ASan. Native `cmdop dev` stack.
 */
#include "frozen/cmdop_options_v1.h"
#include "check.h"

int main(void) {
  const char *host = env_required("CMDOP_HOST");
  uint16_t port = (uint16_t)strtol(env_required("CMDOP_PORT"), NULL, 10);
  const char *machine = env_required("CMDOP_TEST_HOSTNAME");
  cmdop_options *o = malloc(sizeof *o);
  unsigned char *guarded = malloc(sizeof(cmdop_options) + 64);
  cmdop_options macro = CMDOP_OPTIONS_INIT;
  cmdop_client *c = NULL;
  cmdop_exec_result *r = NULL;
  size_t i, len = 0;
  const uint8_t *out;

  CHECK(o != NULL && guarded != NULL);
  if (o == NULL || guarded == NULL) return check_report();
  CHECK(cmdop_abi_version() == CMDOP_ABI_VERSION);

  /* init writes exactly the version-1 bytes. */
  memset(guarded, 0x5A, sizeof(cmdop_options) + 64);
  CHECK_OK(cmdop_options_init((cmdop_options *)guarded, CMDOP_OPTIONS_VERSION));
  for (i = sizeof(cmdop_options); i < sizeof(cmdop_options) + 64; i++) CHECK(guarded[i] == 0x5A);
  memset(o, 0xAB, sizeof *o);
  CHECK_OK(cmdop_options_init(o, CMDOP_OPTIONS_VERSION));
  CHECK(o->version == 1 && o->server == NULL && o->tls == CMDOP_TLS_DEFAULT);
  CHECK(o->timeout_ms == macro.timeout_ms && o->max_retries == macro.max_retries &&
        o->auto_reconnect == macro.auto_reconnect && o->debug == macro.debug &&
        o->auto_refresh == macro.auto_refresh &&
        o->max_reconnect_attempts == macro.max_reconnect_attempts);

  /* The library reads the version-1 fields, and only them. */
  o->timeout_ms = 15000;
  CHECK_OK(cmdop_local_new(host, port, NULL, o, &c));
  CHECK_OK(cmdop_connect(c));
  CHECK_OK(cmdop_set_machine(c, machine));
  CHECK_OK(cmdop_execute(c, "echo built-against-v1", 0, &r));
  out = cmdop_exec_result_output(r, &len);
  CHECK(bytes_contain(out, len, "built-against-v1"));
  CHECK(cmdop_exec_result_exit_code(r) == 0);
  cmdop_exec_result_free(r);
  cmdop_client_free(c);
  c = NULL;

  /* Version-1 checks still apply: timeout 0 is refused, version 0 too. */
  o->timeout_ms = 0;
  CHECK_STATUS(cmdop_local_new(host, port, NULL, o, &c), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(c == NULL);
  o->timeout_ms = 1000;
  o->version = 0;
  CHECK_STATUS(cmdop_local_new(host, port, NULL, o, &c), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cmdop_options_init(o, 0), CMDOP_STATUS_INVALID_ARGUMENT);

  free(o);
  free(guarded);
  return check_report();
}
