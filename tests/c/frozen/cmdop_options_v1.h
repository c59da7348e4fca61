/*
 * FROZEN: the part of cmdop.h a program built against libcmdop 1.0
 * (CMDOP_ABI_VERSION 1, CMDOP_OPTIONS_VERSION 1) compiled in. Never edit
 * it when cmdop.h changes: test_options_v1.c proves that such a program
 * keeps working with the current library. It defines CMDOP_H, so the real
 * header (included by check.h) is skipped.
 */
#ifndef CMDOP_H
#define CMDOP_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define CMDOP_ABI_VERSION 1
#define CMDOP_OPTIONS_VERSION 1
#define CMDOP_OPTIONS_INIT { CMDOP_OPTIONS_VERSION, NULL, CMDOP_TLS_DEFAULT, NULL, NULL, 0, 30000, 3, 500, true, 1000, 30000, 10, false, true }

typedef enum cmdop_status {
  CMDOP_STATUS_OK = 0,
  CMDOP_STATUS_INVALID_ARGUMENT = 1,
  CMDOP_STATUS_UNAUTHENTICATED = 2,
  CMDOP_STATUS_NOT_FOUND = 3,
  CMDOP_STATUS_AMBIGUOUS = 4,
  CMDOP_STATUS_TIMEOUT = 5,
  CMDOP_STATUS_UNAVAILABLE = 6,
  CMDOP_STATUS_DISCONNECTED = 7,
  CMDOP_STATUS_CANCELLED = 8,
} cmdop_status;

typedef enum cmdop_tls {
  CMDOP_TLS_DEFAULT = 0,
  CMDOP_TLS_ON = 1,
  CMDOP_TLS_OFF = 2,
} cmdop_tls;

typedef struct cmdop_client cmdop_client;
typedef struct cmdop_exec_result cmdop_exec_result;

typedef struct cmdop_options {
  uint32_t version;
  const char *server;
  int tls;
  const char *ca_pem_path;
  const uint8_t *ca_pem;
  size_t ca_pem_len;
  uint32_t timeout_ms;
  uint32_t max_retries;
  uint32_t retry_delay_ms;
  bool auto_reconnect;
  uint32_t reconnect_delay_ms;
  uint32_t max_reconnect_delay_ms;
  uint32_t max_reconnect_attempts;
  bool debug;
  bool auto_refresh;
} cmdop_options;

#ifdef __cplusplus
extern "C" {
#endif

const char *cmdop_status_str(int status);
const char *cmdop_last_error_message(void);
enum cmdop_status cmdop_options_init(struct cmdop_options *opts, uint32_t version);
enum cmdop_status cmdop_remote_new(const char *api_key, const struct cmdop_options *opts,
                                   struct cmdop_client **out);
enum cmdop_status cmdop_local_new(const char *host, uint16_t port, const char *api_key,
                                  const struct cmdop_options *opts, struct cmdop_client **out);
enum cmdop_status cmdop_connect(struct cmdop_client *client);
void cmdop_client_free(struct cmdop_client *client);
enum cmdop_status cmdop_set_machine(struct cmdop_client *client, const char *hostname);
enum cmdop_status cmdop_execute(struct cmdop_client *client, const char *command, uint32_t timeout_ms,
                                struct cmdop_exec_result **out);
const uint8_t *cmdop_exec_result_output(const struct cmdop_exec_result *r, size_t *len);
int32_t cmdop_exec_result_exit_code(const struct cmdop_exec_result *r);
void cmdop_exec_result_free(struct cmdop_exec_result *r);
uint32_t cmdop_abi_version(void);

#ifdef __cplusplus
}
#endif

#endif /* CMDOP_H */
