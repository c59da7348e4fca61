/* Helpers of the Go binding, defined in the preamble of capi.go. Each
 * calls one libcmdop function and, on failure, stores a malloc'd copy of
 * this thread's error message in *msg (NULL on success). */
#ifndef CMDOPGO_H
#define CMDOPGO_H

#include <stdint.h>
#include <stdlib.h>
#include <cmdop.h>

enum { CMDOPGO_ON_CONNECT, CMDOPGO_ON_DISCONNECT, CMDOPGO_ON_ERROR, CMDOPGO_ON_TOKENS };

cmdop_status cmdopgo_remote_new(const char *key, const cmdop_options *o, cmdop_client **out, char **msg);
cmdop_status cmdopgo_remote_new_oauth(const char *access, const char *refresh, const cmdop_options *o,
                                      cmdop_client **out, char **msg);
cmdop_status cmdopgo_local_new(const char *host, uint16_t port, const char *key, const cmdop_options *o, cmdop_client **out,
                               char **msg);
cmdop_status cmdopgo_connect(cmdop_client *c, char **msg);
cmdop_status cmdopgo_close(cmdop_client *c, char **msg);
cmdop_status cmdopgo_set_machine(cmdop_client *c, const char *name, int by_id, char **msg);
/* Installs the trampoline of `which` with cgo handle h (0: removes it). */
cmdop_status cmdopgo_set_callback(cmdop_client *c, int which, uintptr_t h, char **msg);
/* Every execute: cmdop_exec with o (NULL: defaults), timeout_ms (0: o's), the
   Go chunk trampoline when h is not 0, cancel token tok and stdin stream in. */
cmdop_status cmdopgo_exec(cmdop_client *c, const char *cmd, const cmdop_exec_options *o, uint32_t timeout_ms,
                          cmdop_exec_stdin *in, uintptr_t h, const cmdop_cancel_token *tok,
                          cmdop_exec_result **out, char **msg);
/* cmdop_exec_fleet with the Go fleet trampolines and cgo handle h (output
   only when want_output) and cancel token tok. */
cmdop_status cmdopgo_exec_fleet(cmdop_client *c, const char *cmd, const cmdop_fleet_options *f,
                                const cmdop_exec_options *o, uintptr_t h, int want_output,
                                const cmdop_cancel_token *tok, cmdop_fleet_result_list **out, char **msg);
cmdop_status cmdopgo_exec_stdin_write(cmdop_exec_stdin *in, const void *data, size_t len, char **msg);
/* cmdop_download_file (download != 0) or cmdop_upload_file, progress to cgo handle h (0: none). */
cmdop_status cmdopgo_transfer(cmdop_client *c, int download, const char *from, const char *to,
                              const cmdop_transfer_options *o, uintptr_t h, const cmdop_cancel_token *tok,
                              char **msg);
/* cmdop_read_file_with_callback into cgo handle h. */
cmdop_status cmdopgo_read_file_to(cmdop_client *c, const char *path, uintptr_t h, const cmdop_cancel_token *tok,
                                  uint64_t *n, char **msg);
cmdop_status cmdopgo_connection_info(cmdop_client *c, cmdop_connection_info **out, char **msg);
cmdop_status cmdopgo_active_session(cmdop_client *c, const char *host, cmdop_session **out, char **msg);
cmdop_status cmdopgo_list_sessions(cmdop_client *c, cmdop_session_list **out, char **msg);
cmdop_status cmdopgo_list_machines(cmdop_client *c, const char *selector, const char *hosts,
                                  cmdop_machine_list **out, char **msg);
cmdop_status cmdopgo_files_list(cmdop_client *c, const char *path, const char *token, int hidden,
                                cmdop_file_list **out, char **msg);
cmdop_status cmdopgo_file_read(cmdop_client *c, const char *path, cmdop_bytes **out, char **msg);
cmdop_status cmdopgo_file_write(cmdop_client *c, const char *path, const void *data, size_t len, char **msg);
/* cmdop_attach with the Go output trampoline and cgo handle h. */
cmdop_status cmdopgo_stream_attach(cmdop_client *c, const char *session_id, uintptr_t h, cmdop_attachment **out,
                                   char **msg);
cmdop_status cmdopgo_stream_write(cmdop_attachment *s, const void *data, size_t len, char **msg);
cmdop_status cmdopgo_stream_resize(cmdop_attachment *s, uint16_t cols, uint16_t rows, char **msg);

#endif
