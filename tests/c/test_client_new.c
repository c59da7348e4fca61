/*
 * Creating remote and local clients: versioned options and their defaults,
 * NULL options, the API key from the argument or $CMDOP_API_KEY, and which
 * keys the library accepts (any non-empty one: the server judges them).
 * Runs against the native `cmdop dev` stack.
 */
#include "check.h"

static void options_defaults(void) {
  cmdop_options r, r_macro = CMDOP_OPTIONS_INIT;

  memset(&r, 0xAB, sizeof r);
  CHECK_OK(cmdop_options_init(&r, CMDOP_OPTIONS_VERSION));
  CHECK(r.version == CMDOP_OPTIONS_VERSION);
  CHECK(r.server == NULL);
  CHECK(r.tls == CMDOP_TLS_DEFAULT);
  CHECK(r.ca_pem_path == NULL && r.ca_pem == NULL && r.ca_pem_len == 0);
  CHECK(r.timeout_ms == 30000);
  CHECK(r.max_retries == 3);
  CHECK(r.retry_delay_ms == 500);
  CHECK(r.auto_reconnect);
  CHECK(r.reconnect_delay_ms == 1000);
  CHECK(r.max_reconnect_delay_ms == 30000);
  CHECK(r.max_reconnect_attempts == 10);
  CHECK(!r.debug);
  CHECK(r.auto_refresh);
  /* The static initialiser gives the same defaults. */
  CHECK(r_macro.version == r.version && r_macro.timeout_ms == r.timeout_ms &&
        r_macro.max_retries == r.max_retries && r_macro.retry_delay_ms == r.retry_delay_ms &&
        r_macro.auto_reconnect == r.auto_reconnect &&
        r_macro.reconnect_delay_ms == r.reconnect_delay_ms &&
        r_macro.max_reconnect_delay_ms == r.max_reconnect_delay_ms &&
        r_macro.max_reconnect_attempts == r.max_reconnect_attempts &&
        r_macro.debug == r.debug && r_macro.auto_refresh == r.auto_refresh &&
        r_macro.tls == r.tls);

  CHECK_STATUS(cmdop_options_init(NULL, CMDOP_OPTIONS_VERSION), CMDOP_STATUS_INVALID_ARGUMENT);
  /* Unknown versions: refused, nothing written. */
  r.timeout_ms = 7;
  CHECK_STATUS(cmdop_options_init(&r, 0), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_STATUS(cmdop_options_init(&r, CMDOP_OPTIONS_VERSION + 1), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("newer libcmdop");
  CHECK(r.timeout_ms == 7);

  CHECK(cmdop_abi_version() == CMDOP_ABI_VERSION);
  CHECK(cmdop_version() != NULL && cmdop_version()[0] != '\0');
}

static void versioned_options(void) {
  cmdop_options r;
  cmdop_options l;
  cmdop_client *c = (cmdop_client *)&r; /* must be reset to NULL on failure */
  unsigned char bad_bool = 7;

  cmdop_options_init(&r, CMDOP_OPTIONS_VERSION);
  r.version = 0;
  CHECK_STATUS(cmdop_remote_new("cmdop_anything", &r, &c), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(c == NULL);
  CHECK_ERROR_MENTIONS("version");
  r.version = CMDOP_OPTIONS_VERSION + 100;
  c = (cmdop_client *)&r;
  CHECK_STATUS(cmdop_remote_new("cmdop_anything", &r, &c), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(c == NULL);

  cmdop_options_init(&l, CMDOP_OPTIONS_VERSION);
  l.version = 999;
  c = (cmdop_client *)&l;
  CHECK_STATUS(cmdop_local_new("127.0.0.1", 1, NULL, &l, &c), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(c == NULL);

  /* Values C may put in fields the library reads: checked, never UB. */
  cmdop_options_init(&l, CMDOP_OPTIONS_VERSION);
  l.tls = 3;
  CHECK_STATUS(cmdop_local_new("127.0.0.1", 1, NULL, &l, &c), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("CMDOP_TLS_");
  l.tls = -1;
  CHECK_STATUS(cmdop_local_new("127.0.0.1", 1, NULL, &l, &c), CMDOP_STATUS_INVALID_ARGUMENT);
  l.tls = CMDOP_TLS_DEFAULT;
  memcpy(&l.debug, &bad_bool, 1); /* a bool byte that is neither 0 nor 1 */
  CHECK_STATUS(cmdop_local_new("127.0.0.1", 1, NULL, &l, &c), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("debug");
  /* cmdop_local_new takes host and port as arguments: server must stay NULL. */
  cmdop_options_init(&l, CMDOP_OPTIONS_VERSION);
  l.server = "127.0.0.1:1";
  CHECK_STATUS(cmdop_local_new("127.0.0.1", 1, NULL, &l, &c), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("server");
  CHECK(c == NULL);
}

static void api_key_sources(void) {
  const char *key = env_required("CMDOP_API_KEY");
  char *saved = strdup(key);
  cmdop_client *c = NULL;
  cmdop_options r;

  /* NULL key and no $CMDOP_API_KEY: UNAUTHENTICATED naming the variable. */
  unsetenv("CMDOP_API_KEY");
  CHECK_STATUS(cmdop_remote_new(NULL, NULL, &c), CMDOP_STATUS_UNAUTHENTICATED);
  CHECK(c == NULL);
  CHECK_ERROR_MENTIONS("CMDOP_API_KEY");
  setenv("CMDOP_API_KEY", "", 1);
  CHECK_STATUS(cmdop_remote_new(NULL, NULL, &c), CMDOP_STATUS_UNAUTHENTICATED);
  CHECK_ERROR_MENTIONS("CMDOP_API_KEY");
  CHECK(c == NULL);
  /* An explicit empty key is no key either. */
  CHECK(cmdop_remote_new("", NULL, &c) != CMDOP_STATUS_OK);
  CHECK(c == NULL);

  /* Any non-empty key is accepted by the library, whatever its prefix. */
  setenv("CMDOP_API_KEY", "cmd_documented_style_key", 1);
  CHECK_OK(cmdop_remote_new(NULL, NULL, &c));
  CHECK(c != NULL);
  cmdop_client_free(c);
  c = NULL;
  CHECK_OK(cmdop_remote_new("whatever-key-format", NULL, &c));
  CHECK(cmdop_last_error_message()[0] == '\0');
  cmdop_client_free(c);
  c = NULL;

  /* From the environment, against the real server: connects. */
  setenv("CMDOP_API_KEY", saved, 1);
  cmdop_options_init(&r, CMDOP_OPTIONS_VERSION);
  r.server = env_required("CMDOP_SERVER");
  r.tls = CMDOP_TLS_OFF;
  r.timeout_ms = 10000;
  CHECK_OK(cmdop_remote_new(NULL, &r, &c));
  CHECK_OK(cmdop_connect(c));
  CHECK(cmdop_is_connected(c));
  cmdop_client_free(c);
  c = NULL;

  /* No options at all: the server comes from $CMDOP_SERVER, as for the
   * cmdop command line, and a loopback "host:port" without a scheme means
   * plaintext by the shared TLS rule (CMDOP_TLS_DEFAULT). */
  CHECK_OK(cmdop_remote_new(NULL, NULL, &c));
  CHECK_OK(cmdop_connect(c));
  CHECK(cmdop_is_connected(c));
  {
    cmdop_connection_info *info = NULL;
    CHECK_OK(cmdop_get_connection_info(c, &info));
    CHECK(!cmdop_connection_info_tls(info));
    cmdop_connection_info_free(info);
  }
  cmdop_client_free(c);
  c = NULL;
  /* The same server with https:// is TLS: the plaintext server fails it. */
  {
    char tls_server[256];
    cmdop_options t;
    snprintf(tls_server, sizeof tls_server, "https://%s", env_required("CMDOP_SERVER"));
    cmdop_options_init(&t, CMDOP_OPTIONS_VERSION);
    t.server = tls_server;
    t.timeout_ms = 3000;
    t.max_retries = 0;
    t.auto_reconnect = false;
    CHECK_OK(cmdop_remote_new(NULL, &t, &c));
    CHECK(cmdop_connect(c) != CMDOP_STATUS_OK);
    cmdop_client_free(c);
    c = NULL;
  }

  /* A wrong key in a documented shape: the server rejects it at connect. */
  CHECK_OK(cmdop_remote_new("cmd_not_a_real_key", &r, &c));
  CHECK_STATUS(cmdop_connect(c), CMDOP_STATUS_UNAUTHENTICATED);
  CHECK(cmdop_last_error_message()[0] != '\0');
  CHECK(strstr(cmdop_last_error_message(), "cmd_not_a_real_key") == NULL);
  CHECK(!cmdop_is_connected(c));
  cmdop_client_free(c);
  c = NULL;

  /* Local client: NULL opts = defaults, key from the environment. */
  {
    const char *host = env_required("CMDOP_HOST");
    uint16_t port = (uint16_t)strtol(env_required("CMDOP_PORT"), NULL, 10);
    cmdop_options l;

    CHECK_OK(cmdop_local_new(host, port, NULL, NULL, &c));
    CHECK_OK(cmdop_connect(c));
    cmdop_client_free(c);
    c = NULL;

    /* The api_key argument wins over the environment. */
    cmdop_options_init(&l, CMDOP_OPTIONS_VERSION);
    CHECK_OK(cmdop_local_new(host, port, "cmdop_wrong_key", &l, &c));
    CHECK_STATUS(cmdop_connect(c), CMDOP_STATUS_UNAUTHENTICATED);
    cmdop_client_free(c);
    c = NULL;

    /* No key anywhere: creating works, the server refuses the connection. */
    unsetenv("CMDOP_API_KEY");
    CHECK_OK(cmdop_local_new(host, port, NULL, NULL, &c));
    CHECK_STATUS(cmdop_connect(c), CMDOP_STATUS_UNAUTHENTICATED);
    cmdop_client_free(c);
    c = NULL;
    setenv("CMDOP_API_KEY", saved, 1);

    /* Bad addresses. */
    CHECK_STATUS(cmdop_local_new("", port, NULL, NULL, &c), CMDOP_STATUS_INVALID_ARGUMENT);
    CHECK(c == NULL);
    CHECK_STATUS(cmdop_local_new(host, 0, NULL, NULL, &c), CMDOP_STATUS_INVALID_ARGUMENT);
    CHECK(c == NULL);
  }
  free(saved);
}

/* timeout_ms bounds connecting to a port where nobody listens. */
static void connect_timeout(void) {
  cmdop_options l;
  cmdop_client *c = NULL;
  double t0;
  cmdop_status s;

  cmdop_options_init(&l, CMDOP_OPTIONS_VERSION);
  l.timeout_ms = 500;
  CHECK_OK(cmdop_local_new("127.0.0.1", 1, "cmdop_x", &l, &c));
  t0 = now_ms();
  s = cmdop_connect(c);
  CHECK(s == CMDOP_STATUS_UNAVAILABLE || s == CMDOP_STATUS_TIMEOUT);
  CHECK(now_ms() - t0 < 5000);
  CHECK(cmdop_last_error_message()[0] != '\0');
  cmdop_client_free(c);
}

/* The tls flag is honoured: TLS against a plaintext server cannot connect. */
static void tls_flag(void) {
  const char *host = env_required("CMDOP_HOST");
  uint16_t port = (uint16_t)strtol(env_required("CMDOP_PORT"), NULL, 10);
  cmdop_options l;
  cmdop_client *c = NULL;

  cmdop_options_init(&l, CMDOP_OPTIONS_VERSION);
  l.tls = CMDOP_TLS_ON;
  l.timeout_ms = 3000;
  CHECK_OK(cmdop_local_new(host, port, NULL, &l, &c));
  CHECK(cmdop_connect(c) != CMDOP_STATUS_OK);
  CHECK(!cmdop_is_connected(c));
  cmdop_client_free(c);
}

/* Remote defaults without $CMDOP_SERVER: the hosted endpoint over TLS
 * (not contacted here). */
static void remote_defaults(void) {
  cmdop_client *c = NULL;
  cmdop_connection_info *info = NULL;
  cmdop_options r;
  char *saved = strdup(env_required("CMDOP_SERVER"));

  unsetenv("CMDOP_SERVER");
  cmdop_options_init(&r, CMDOP_OPTIONS_VERSION);
  r.timeout_ms = 300; /* the sandbox has no route to the hosted endpoint */
  CHECK_OK(cmdop_remote_new("cmdop_key", &r, &c));
  CHECK(!cmdop_is_connected(c));
  CHECK_OK(cmdop_get_connection_info(c, &info));
  if (info) {
    CHECK(strstr(cmdop_connection_info_server(info), "grpc.cmdop.com") != NULL);
    CHECK(cmdop_connection_info_tls(info));
    CHECK(!cmdop_connection_info_connected(info));
  }
  cmdop_connection_info_free(info);
  cmdop_client_free(c);
  setenv("CMDOP_SERVER", saved, 1);
  free(saved);
}

int main(void) {
  options_defaults();
  versioned_options();
  api_key_sources();
  connect_timeout();
  tls_flag();
  remote_defaults();
  return check_report();
}
