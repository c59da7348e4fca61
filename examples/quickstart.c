/*
 * libcmdop quickstart: the CMDOP connection walkthrough in C.
 *
 *   connect -> connection info -> pick a machine -> execute -> files ->
 *   sessions -> reconnection settings -> clean up
 *
 * Build and run from the repository root after `cargo build` (scripts/demo.sh
 * and the C tests run these very lines against `cmdop dev`):
 *   cc -std=c99 -Wall -Wextra -O2 -Iinclude examples/quickstart.c -Ltarget/debug -lcmdop -Wl,-rpath,"$PWD/target/debug" -o target/quickstart
 *   CMDOP_SERVER=127.0.0.1:50051 CMDOP_API_KEY=cmdop_... target/quickstart [hostname]
 *
 * CMDOP_SERVER ("host:port") selects a local control plane (plaintext);
 * without it the client talks to the hosted service over TLS.
 * CMDOP_API_KEY holds the key in both cases.
 */
#define _POSIX_C_SOURCE 200809L
#include "cmdop.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Print what failed and the library's explanation, then leave. */
static void die(const char *what, cmdop_status s) {
  fprintf(stderr, "%s failed: %s: %s\n", what, cmdop_status_str((int)s), cmdop_last_error_message());
  exit(1);
}

/* Event callbacks run on a library thread: keep them short. */
static void on_connect(void *ud) { (void)ud; printf("[event] connected\n"); }
static void on_disconnect(void *ud, const char *reason, bool will_reconnect) {
  (void)ud;
  printf("[event] disconnected: %s%s\n", reason, will_reconnect ? " (reconnecting)" : "");
}
static void on_error(void *ud, cmdop_status s, const char *msg) {
  (void)ud;
  printf("[event] error %s: %s\n", cmdop_status_str((int)s), msg);
}

/* 1. A client: local control plane from CMDOP_SERVER, else the hosted one. */
static cmdop_client *create_client(void) {
  const char *server = getenv("CMDOP_SERVER");
  cmdop_client *client = NULL;
  cmdop_status s;
  if (server && *server) {
    char host[256];
    const char *colon = strrchr(server, ':');
    cmdop_options opts = CMDOP_OPTIONS_INIT; /* key from CMDOP_API_KEY */
    if (!colon || (size_t)(colon - server) >= sizeof host) {
      fprintf(stderr, "CMDOP_SERVER must look like host:port, got \"%s\"\n", server);
      exit(1);
    }
    memcpy(host, server, (size_t)(colon - server));
    host[colon - server] = '\0';
    opts.timeout_ms = 15000;
    s = cmdop_local_new(host, (uint16_t)atoi(colon + 1), NULL, &opts, &client);
  } else {
    s = cmdop_remote_new(NULL /* = $CMDOP_API_KEY */, NULL /* defaults: TLS, hosted */, &client);
  }
  if (s != CMDOP_STATUS_OK) die("creating the client", s);
  return client;
}

int main(int argc, char **argv) {
  cmdop_client *client = create_client();
  cmdop_connection_info *info = NULL;
  cmdop_exec_result *result = NULL;
  cmdop_file_list *files = NULL;
  cmdop_session_list *sessions = NULL;
  cmdop_options defaults;
  const uint8_t *out;
  size_t len, i;
  cmdop_status s;

  printf("libcmdop %s\n", cmdop_version());

  /* 2. Events, then connect. */
  cmdop_on_connect(client, on_connect, NULL, NULL);
  cmdop_on_disconnect(client, on_disconnect, NULL, NULL);
  cmdop_on_error(client, on_error, NULL, NULL);
  if ((s = cmdop_connect(client)) != CMDOP_STATUS_OK) die("connecting", s);

  /* 3. Connection info: where we are, how fast, which execute path. */
  if ((s = cmdop_get_connection_info(client, &info)) != CMDOP_STATUS_OK) die("connection info", s);
  printf("server %s (TLS %s), version %s, latency %.2f ms, native exec %s\n",
         cmdop_connection_info_server(info), cmdop_connection_info_tls(info) ? "on" : "off",
         cmdop_connection_info_server_version(info), cmdop_connection_info_latency_ms(info),
         cmdop_connection_info_native_exec(info) ? "yes" : "no (terminal fallback)");
  printf("capabilities:");
  for (i = 0; i < cmdop_connection_info_capability_count(info); i++)
    printf(" %s", cmdop_connection_info_capability_get(info, i));
  printf("%s\n", cmdop_connection_info_has_capability(info, CMDOP_CAPABILITY_FILES)
                     ? " (file transfers stream: no 32 MiB cap)" : " (official server)");
  cmdop_connection_info_free(info);

  /* 4. Pick a machine: argv[1], else the most recently active session's. */
  if (argc > 1) {
    s = cmdop_set_machine(client, argv[1]);
  } else {
    cmdop_session *active = NULL;
    if ((s = cmdop_get_active_session(client, NULL, &active)) != CMDOP_STATUS_OK) die("finding a machine", s);
    s = cmdop_set_machine(client, cmdop_session_hostname(active));
    cmdop_session_free(active);
  }
  if (s != CMDOP_STATUS_OK) die("selecting the machine", s);

  /* 5. Execute a command (NULL options: the defaults; set a timeout, stdin,
   *    environment, an output callback or a cancel token in a
   *    cmdop_exec_options initialised with CMDOP_EXEC_OPTIONS_INIT). */
  s = cmdop_exec(client, "uname -a && echo \"hello from $(hostname)\"", NULL, &result);
  if (s != CMDOP_STATUS_OK) die("executing", s);
  out = cmdop_exec_result_output(result, &len);
  printf("--- output (%zu bytes, exit code %d, %llu ms)\n%.*s", len, cmdop_exec_result_exit_code(result),
         (unsigned long long)cmdop_exec_result_duration_ms(result), (int)len, (const char *)out);
  cmdop_exec_result_free(result);

  /* 6. Files of the home directory (first page). */
  if ((s = cmdop_list_files(client, "~", &files)) != CMDOP_STATUS_OK) {
    printf("listing ~ failed (%s): %s\n", cmdop_status_str((int)s), cmdop_last_error_message());
  } else {
    printf("--- %s: %zu entries\n", cmdop_file_list_path(files), cmdop_file_list_count(files));
    for (i = 0; i < cmdop_file_list_count(files) && i < 10; i++) {
      const cmdop_file_entry *e = cmdop_file_list_get(files, i);
      printf("  %c %04o %10lld  %s\n", cmdop_file_entry_type(e) == CMDOP_FILE_TYPE_DIRECTORY ? 'd' : '-',
             (unsigned)cmdop_file_entry_mode(e), (long long)cmdop_file_entry_size(e), cmdop_file_entry_name(e));
    }
    cmdop_file_list_free(files);
  }

  /* 7. Sessions of the workspace. */
  if ((s = cmdop_list_sessions(client, &sessions)) != CMDOP_STATUS_OK) die("listing sessions", s);
  printf("--- %zu session(s)\n", cmdop_session_list_count(sessions));
  for (i = 0; i < cmdop_session_list_count(sessions); i++) {
    const cmdop_session *e = cmdop_session_list_get(sessions, i);
    printf("  %s  %-20s %-12s %s %s\n", cmdop_session_id(e), cmdop_session_hostname(e), cmdop_session_status(e),
           cmdop_session_os(e), cmdop_session_shell(e));
  }
  cmdop_session_list_free(sessions);

  /* 8. Reconnection: on by default; these options tune it at creation. */
  cmdop_options_init(&defaults, CMDOP_OPTIONS_VERSION);
  printf("--- auto_reconnect %s, first delay %u ms, max delay %u ms, max attempts %u (0 = forever)\n",
         defaults.auto_reconnect ? "on" : "off", defaults.reconnect_delay_ms, defaults.max_reconnect_delay_ms,
         defaults.max_reconnect_attempts);

  /* 9. Clean up: close (fires on_disconnect), then free. */
  cmdop_close(client);
  cmdop_client_free(client);
  return 0;
}
