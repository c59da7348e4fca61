package cmdop

// The C side of the binding. Every helper here calls one libcmdop function
// and, on failure, copies the thread-local error message in the same C call:
// a goroutine may move to another OS thread between two cgo calls, so
// reading cmdop_last_error_message() in a second call could read another
// thread's message. The copy is malloc'd; Go frees it (takeMessage).

/*
#cgo pkg-config: cmdop
#include <string.h>
#include "cmdopgo.h"

// Exported from callbacks.go.
extern void cmdopgoOnConnect(uintptr_t h);
extern void cmdopgoOnDisconnect(uintptr_t h, char *reason, bool will_reconnect);
extern void cmdopgoOnError(uintptr_t h, int status, char *message);
extern void cmdopgoOnTokens(uintptr_t h, char *access, char *refresh);
extern void cmdopgoOnChunk(uintptr_t h, int kind, char *data, size_t len);
extern void cmdopgoFreeHandle(uintptr_t h);
extern void cmdopgoForgetExecSink(uintptr_t h);
extern void cmdopgoOnOutput(uintptr_t h, char *data, size_t len);
extern void cmdopgoOnProgress(uintptr_t h, uint64_t done, uint64_t total);
extern void cmdopgoOnReadChunk(uintptr_t h, char *data, size_t len);
extern void cmdopgoOnFleetOutput(uintptr_t h, cmdop_machine *m, int kind, char *data, size_t len);
extern void cmdopgoOnFleetResult(uintptr_t h, cmdop_fleet_result *r);

static void cmdopgo_connect_cb(void *ud) { cmdopgoOnConnect((uintptr_t)ud); }
static void cmdopgo_disconnect_cb(void *ud, const char *reason, bool will_reconnect) {
  cmdopgoOnDisconnect((uintptr_t)ud, (char *)reason, will_reconnect);
}
static void cmdopgo_error_cb(void *ud, cmdop_status st, const char *msg) {
  cmdopgoOnError((uintptr_t)ud, (int)st, (char *)msg);
}
static void cmdopgo_token_cb(void *ud, const char *access, const char *refresh) {
  cmdopgoOnTokens((uintptr_t)ud, (char *)access, (char *)refresh);
}
static void cmdopgo_chunk_cb(void *ud, cmdop_stream_kind kind, const uint8_t *data, size_t len) {
  cmdopgoOnChunk((uintptr_t)ud, (int)kind, (char *)data, len);
}
static void cmdopgo_free_cb(void *ud) { cmdopgoFreeHandle((uintptr_t)ud); }
static void cmdopgo_forget_exec_sink(void *ud) { cmdopgoForgetExecSink((uintptr_t)ud); }
static void cmdopgo_output_cb(void *ud, const uint8_t *data, size_t len) {
  cmdopgoOnOutput((uintptr_t)ud, (char *)data, len);
}

static void cmdopgo_progress_cb(void *ud, uint64_t done, uint64_t total) {
  cmdopgoOnProgress((uintptr_t)ud, done, total);
}
static void cmdopgo_read_chunk_cb(void *ud, const uint8_t *data, size_t len) {
  cmdopgoOnReadChunk((uintptr_t)ud, (char *)data, len);
}

static void cmdopgo_fleet_output_cb(void *ud, const cmdop_machine *m, cmdop_stream_kind kind,
                                    const uint8_t *data, size_t len) {
  cmdopgoOnFleetOutput((uintptr_t)ud, (cmdop_machine *)m, (int)kind, (char *)data, len);
}
static void cmdopgo_fleet_result_cb(void *ud, const cmdop_fleet_result *r) {
  cmdopgoOnFleetResult((uintptr_t)ud, (cmdop_fleet_result *)r);
}

// This thread's message for a failed status (malloc'd), NULL on success.
static char *cmdopgo_message(cmdop_status st) {
  if (st == CMDOP_STATUS_OK) return NULL;
  const char *m = cmdop_last_error_message();
  return strdup(m ? m : "");
}

cmdop_status cmdopgo_remote_new(const char *key, const cmdop_options *o,
                                       cmdop_client **out, char **msg) {
  cmdop_status st = cmdop_remote_new(key, o, out);
  *msg = cmdopgo_message(st);
  return st;
}

cmdop_status cmdopgo_remote_new_oauth(const char *access, const char *refresh,
                                             const cmdop_options *o, cmdop_client **out,
                                             char **msg) {
  cmdop_status st = cmdop_remote_new_oauth(access, refresh, o, out);
  *msg = cmdopgo_message(st);
  return st;
}

cmdop_status cmdopgo_local_new(const char *host, uint16_t port, const char *key, const cmdop_options *o,
                                      cmdop_client **out, char **msg) {
  cmdop_status st = cmdop_local_new(host, port, key, o, out);
  *msg = cmdopgo_message(st);
  return st;
}

cmdop_status cmdopgo_connect(cmdop_client *c, char **msg) {
  cmdop_status st = cmdop_connect(c);
  *msg = cmdopgo_message(st);
  return st;
}

cmdop_status cmdopgo_close(cmdop_client *c, char **msg) {
  cmdop_status st = cmdop_close(c);
  *msg = cmdopgo_message(st);
  return st;
}

cmdop_status cmdopgo_set_machine(cmdop_client *c, const char *name, int by_id, char **msg) {
  cmdop_status st = by_id ? cmdop_set_machine_id(c, name) : cmdop_set_machine(c, name);
  *msg = cmdopgo_message(st);
  return st;
}

// Installs the trampoline of `which` with Go handle `h`, or removes the
// callback when h is 0. The library calls cmdopgo_free_cb(h) once done.
cmdop_status cmdopgo_set_callback(cmdop_client *c, int which, uintptr_t h, char **msg) {
  void *ud = (void *)h;
  cmdop_free_fn fin = h ? cmdopgo_free_cb : NULL;
  cmdop_status st;
  switch (which) {
  case CMDOPGO_ON_CONNECT:
    st = cmdop_on_connect(c, h ? cmdopgo_connect_cb : NULL, ud, fin);
    break;
  case CMDOPGO_ON_DISCONNECT:
    st = cmdop_on_disconnect(c, h ? cmdopgo_disconnect_cb : NULL, ud, fin);
    break;
  case CMDOPGO_ON_ERROR:
    st = cmdop_on_error(c, h ? cmdopgo_error_cb : NULL, ud, fin);
    break;
  default:
    st = cmdop_on_token_refresh(c, h ? cmdopgo_token_cb : NULL, ud, fin);
    break;
  }
  *msg = cmdopgo_message(st);
  return st;
}

// Every execute of the binding: one cmdop_exec() with `o` (NULL: the
// defaults), timeout_ms when not 0, the Go chunk trampoline when h is not 0
// (the library forgets h's sink through cmdopgo_forget_exec_sink once no
// callback can run any more), cancel token tok and stdin stream in (NULL:
// none).
cmdop_status cmdopgo_exec(cmdop_client *c, const char *cmd, const cmdop_exec_options *o, uint32_t timeout_ms,
                          cmdop_exec_stdin *in, uintptr_t h, const cmdop_cancel_token *tok,
                          cmdop_exec_result **out, char **msg) {
  cmdop_exec_options opts = CMDOP_EXEC_OPTIONS_INIT;
  if (o) opts = *o;
  if (timeout_ms) opts.timeout_ms = timeout_ms;
  opts.on_output = h ? cmdopgo_chunk_cb : NULL;
  opts.user_data = (void *)h;
  opts.free_user_data = h ? cmdopgo_forget_exec_sink : NULL;
  opts.cancel = tok;
  opts.input = in;
  cmdop_status st = cmdop_exec(c, cmd, &opts, out);
  *msg = cmdopgo_message(st);
  return st;
}

// cmdop_exec_fleet with the fleet options f and execute options o, the Go
// trampolines with cgo handle h (output only when want_output) and cancel
// token tok.
cmdop_status cmdopgo_exec_fleet(cmdop_client *c, const char *cmd, const cmdop_fleet_options *f,
                                const cmdop_exec_options *o, uintptr_t h, int want_output,
                                const cmdop_cancel_token *tok, cmdop_fleet_result_list **out, char **msg) {
  cmdop_fleet_options fleet = *f;
  cmdop_exec_options opts = *o;
  opts.cancel = tok;
  fleet.on_output = want_output ? cmdopgo_fleet_output_cb : NULL;
  fleet.on_result = cmdopgo_fleet_result_cb;
  fleet.user_data = (void *)h;
  fleet.free_user_data = NULL;
  cmdop_status st = cmdop_exec_fleet(c, cmd, &fleet, &opts, out);
  *msg = cmdopgo_message(st);
  return st;
}

cmdop_status cmdopgo_exec_stdin_write(cmdop_exec_stdin *in, const void *data, size_t len, char **msg) {
  cmdop_status st = cmdop_exec_stdin_write(in, (const uint8_t *)data, len);
  *msg = cmdopgo_message(st);
  return st;
}

// cmdop_download_file (download != 0) or cmdop_upload_file, with the Go
// progress trampoline when h is not 0.
cmdop_status cmdopgo_transfer(cmdop_client *c, int download, const char *from, const char *to,
                              const cmdop_transfer_options *o, uintptr_t h, const cmdop_cancel_token *tok,
                              char **msg) {
  cmdop_progress_fn fn = h ? cmdopgo_progress_cb : NULL;
  cmdop_status st = download ? cmdop_download_file(c, from, to, o, fn, (void *)h, tok)
                             : cmdop_upload_file(c, from, to, o, fn, (void *)h, tok);
  *msg = cmdopgo_message(st);
  return st;
}

cmdop_status cmdopgo_read_file_to(cmdop_client *c, const char *path, uintptr_t h, const cmdop_cancel_token *tok,
                                  uint64_t *n, char **msg) {
  cmdop_status st = cmdop_read_file_with_callback(c, path, cmdopgo_read_chunk_cb, (void *)h, tok, n);
  *msg = cmdopgo_message(st);
  return st;
}

cmdop_status cmdopgo_connection_info(cmdop_client *c, cmdop_connection_info **out, char **msg) {
  cmdop_status st = cmdop_get_connection_info(c, out);
  *msg = cmdopgo_message(st);
  return st;
}

cmdop_status cmdopgo_active_session(cmdop_client *c, const char *host, cmdop_session **out,
                                           char **msg) {
  cmdop_status st = cmdop_get_active_session(c, host, out);
  *msg = cmdopgo_message(st);
  return st;
}

cmdop_status cmdopgo_list_sessions(cmdop_client *c, cmdop_session_list **out, char **msg) {
  cmdop_status st = cmdop_list_sessions(c, out);
  *msg = cmdopgo_message(st);
  return st;
}

cmdop_status cmdopgo_list_machines(cmdop_client *c, const char *selector, const char *hosts,
                                  cmdop_machine_list **out, char **msg) {
  cmdop_status st = cmdop_list_machines(c, selector, hosts, out);
  *msg = cmdopgo_message(st);
  return st;
}

cmdop_status cmdopgo_files_list(cmdop_client *c, const char *path, const char *token,
                                       int hidden, cmdop_file_list **out, char **msg) {
  cmdop_status st = cmdop_list_files_page(c, path, token, hidden != 0, out);
  *msg = cmdopgo_message(st);
  return st;
}

cmdop_status cmdopgo_file_read(cmdop_client *c, const char *path, cmdop_bytes **out, char **msg) {
  cmdop_status st = cmdop_read_file(c, path, out);
  *msg = cmdopgo_message(st);
  return st;
}

cmdop_status cmdopgo_file_write(cmdop_client *c, const char *path, const void *data, size_t len,
                                       char **msg) {
  cmdop_status st = cmdop_write_file(c, path, (const uint8_t *)data, len);
  *msg = cmdopgo_message(st);
  return st;
}
cmdop_status cmdopgo_stream_attach(cmdop_client *c, const char *session_id, uintptr_t h,
                                   cmdop_attachment **out, char **msg) {
  cmdop_status st = cmdop_attach(c, session_id, cmdopgo_output_cb, (void *)h, NULL, out);
  *msg = cmdopgo_message(st);
  return st;
}

cmdop_status cmdopgo_stream_write(cmdop_attachment *s, const void *data, size_t len, char **msg) {
  cmdop_status st = cmdop_attachment_write(s, (const uint8_t *)data, len);
  *msg = cmdopgo_message(st);
  return st;
}

cmdop_status cmdopgo_stream_resize(cmdop_attachment *s, uint16_t cols, uint16_t rows, char **msg) {
  cmdop_status st = cmdop_attachment_resize(s, cols, rows);
  *msg = cmdopgo_message(st);
  return st;
}
*/
import "C"

import "unsafe"

// takeMessage returns and frees a message copied by a cmdopgo_ helper.
func takeMessage(msg *C.char) string {
	if msg == nil {
		return ""
	}
	defer C.free(unsafe.Pointer(msg))
	return C.GoString(msg)
}

// check turns a status and its copied message into nil or an *Error.
func check(st C.cmdop_status, msg *C.char) error {
	text := takeMessage(msg)
	if st == C.CMDOP_STATUS_OK {
		return nil
	}
	return &Error{Status: Status(st), Message: text}
}

// goBytes copies len bytes at p (nil for none).
func goBytes(p *C.uint8_t, n C.size_t) []byte {
	if p == nil || n == 0 {
		return nil
	}
	out := make([]byte, int(n))
	copy(out, unsafe.Slice((*byte)(unsafe.Pointer(p)), int(n)))
	return out
}

// cString is C.CString for a string that must not contain NUL.
func cString(what, s string) (*C.char, error) {
	for i := 0; i < len(s); i++ {
		if s[i] == 0 {
			return nil, &Error{Status: StatusInvalidArgument, Message: what + " contains a NUL byte; remove it"}
		}
	}
	return C.CString(s), nil
}
