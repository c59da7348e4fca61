/*
 * Bad input never crashes: NULL for every pointer argument of every
 * function (INVALID_ARGUMENT, or the documented no-op / neutral value),
 * invalid UTF-8 strings, out-of-range values, calls from 8 threads at once
 * on one client, and blocking calls from inside callbacks (IN_CALLBACK).
 * Native `cmdop dev` stack.
 */
#include "check.h"

#include <pthread.h>

#define INVALID CMDOP_STATUS_INVALID_ARGUMENT
static const char bad_utf8[] = "ab\xff\xfe\xc3";

static void nop_output(void *ud, const uint8_t *d, size_t n) { (void)ud; (void)d; (void)n; }
static void nop_connect(void *ud) { (void)ud; }
static void count_free(void *ud) { (*(int *)ud)++; }

static void null_arguments(cmdop_client *c, const char *machine) {
  cmdop_client *nc = NULL;
  cmdop_exec_result *r = NULL;
  cmdop_file_list *fl = NULL;
  cmdop_bytes *b = NULL;
  cmdop_session *s = NULL;
  cmdop_session_list *sl = NULL;
  cmdop_attachment *st = NULL;
  cmdop_connection_info *info = NULL;
  size_t len = 99;

  CHECK_STATUS(cmdop_remote_new("k", NULL, NULL), INVALID);
  CHECK_STATUS(cmdop_remote_new_oauth("a", "r", NULL, NULL), INVALID);
  CHECK_STATUS(cmdop_remote_new_oauth(NULL, NULL, NULL, &nc), INVALID);
  CHECK_STATUS(cmdop_local_new(NULL, 1, NULL, NULL, &nc), INVALID);
  CHECK(nc == NULL);
  CHECK_STATUS(cmdop_local_new("127.0.0.1", 1, NULL, NULL, NULL), INVALID);
  CHECK_STATUS(cmdop_options_init(NULL, CMDOP_OPTIONS_VERSION), INVALID);
  CHECK_STATUS(cmdop_options_init(NULL, CMDOP_OPTIONS_VERSION), INVALID);

  CHECK_STATUS(cmdop_connect(NULL), INVALID);
  CHECK_ERROR_MENTIONS("client");
  CHECK_STATUS(cmdop_close(NULL), INVALID);
  CHECK(!cmdop_is_connected(NULL));
  cmdop_client_free(NULL);

  CHECK_STATUS(cmdop_set_machine(NULL, machine), INVALID);
  CHECK_STATUS(cmdop_set_machine(c, NULL), INVALID);
  CHECK_STATUS(cmdop_set_machine_id(NULL, "mach_x"), INVALID);
  CHECK_STATUS(cmdop_set_machine_id(c, NULL), INVALID);
  CHECK_STATUS(cmdop_get_connection_info(NULL, &info), INVALID);
  CHECK(info == NULL);
  CHECK_STATUS(cmdop_get_connection_info(c, NULL), INVALID);
  CHECK(cmdop_connection_info_server(NULL) == NULL);
  CHECK(cmdop_connection_info_latency_ms(NULL) < 0.0 || cmdop_connection_info_latency_ms(NULL) == 0.0);

  CHECK_STATUS(cmdop_on_connect(NULL, nop_connect, NULL, NULL), INVALID);
  CHECK_STATUS(cmdop_on_disconnect(NULL, NULL, NULL, NULL), INVALID);
  CHECK_STATUS(cmdop_on_error(NULL, NULL, NULL, NULL), INVALID);
  CHECK_STATUS(cmdop_on_token_refresh(NULL, NULL, NULL, NULL), INVALID);

  CHECK_STATUS(cmdop_execute(NULL, "true", 0, &r), INVALID);
  CHECK(r == NULL);
  CHECK_STATUS(cmdop_execute(c, NULL, 0, &r), INVALID);
  CHECK_STATUS(cmdop_execute(c, "true", 0, NULL), INVALID);
  CHECK_STATUS(cmdop_execute_with_callback(NULL, "true", 0, NULL, NULL, NULL, NULL, &r), INVALID);
  CHECK_STATUS(cmdop_execute_with_callback(c, NULL, 0, NULL, NULL, NULL, NULL, &r), INVALID);
  CHECK_STATUS(cmdop_execute_with_callback(c, "true", 0, NULL, NULL, NULL, NULL, NULL), INVALID);
  {
    /* The finaliser runs once on every outcome, refused arguments included. */
    int freed = 0;
    CHECK_STATUS(cmdop_execute_with_callback(c, NULL, 0, NULL, &freed, count_free, NULL, &r), INVALID);
    CHECK(freed == 1);
    CHECK_STATUS(cmdop_execute_with_options(c, "true", NULL, NULL, &freed, count_free, NULL, NULL),
                 INVALID);
    CHECK(freed == 2);
  }
  CHECK_STATUS(cmdop_cancel_token_cancel(NULL), INVALID);
  cmdop_cancel_token_free(NULL);
  CHECK(cmdop_exec_result_output(NULL, &len) == NULL && len == 0);
  CHECK(cmdop_exec_result_stdout(NULL, NULL) == NULL);
  CHECK(cmdop_exec_result_stderr(NULL, NULL) == NULL);
  CHECK(cmdop_exec_result_exit_code(NULL) == -1);
  CHECK(cmdop_exec_result_signal(NULL) == 0);
  CHECK(!cmdop_exec_result_timed_out(NULL) && !cmdop_exec_result_native(NULL));
  CHECK(!cmdop_exec_result_truncated(NULL) && cmdop_exec_result_duration_ms(NULL) == 0);
  cmdop_exec_result_free(NULL);

  CHECK_STATUS(cmdop_list_files(NULL, "/", &fl), INVALID);
  CHECK_STATUS(cmdop_list_files(c, NULL, &fl), INVALID);
  CHECK_STATUS(cmdop_list_files(c, "/", NULL), INVALID);
  CHECK_STATUS(cmdop_list_files_page(NULL, "/", NULL, false, &fl), INVALID);
  CHECK_STATUS(cmdop_list_files_page(c, NULL, NULL, false, &fl), INVALID);
  CHECK_STATUS(cmdop_list_files_page(c, "/", NULL, false, NULL), INVALID);
  CHECK(fl == NULL);
  CHECK(cmdop_file_list_count(NULL) == 0 && cmdop_file_list_get(NULL, 0) == NULL);
  CHECK(cmdop_file_entry_name(NULL) == NULL && cmdop_file_entry_path(NULL) == NULL);
  CHECK(cmdop_file_entry_type(NULL) == CMDOP_FILE_TYPE_UNKNOWN);
  CHECK(cmdop_file_entry_size(NULL) == 0 && cmdop_file_entry_mode(NULL) == 0 &&
        cmdop_file_entry_mtime(NULL) == 0);
  CHECK(cmdop_file_list_next_page_token(NULL) == NULL || cmdop_file_list_next_page_token(NULL)[0] == '\0');
  CHECK(cmdop_file_list_path(NULL) == NULL || cmdop_file_list_path(NULL)[0] == '\0');
  cmdop_file_list_free(NULL);
  CHECK_STATUS(cmdop_read_file(NULL, "/etc/hostname", &b), INVALID);
  CHECK_STATUS(cmdop_read_file(c, NULL, &b), INVALID);
  CHECK_STATUS(cmdop_read_file(c, "/etc/hostname", NULL), INVALID);
  CHECK(b == NULL);
  CHECK_STATUS(cmdop_write_file(NULL, "/tmp/x", (const uint8_t *)"x", 1), INVALID);
  CHECK_STATUS(cmdop_write_file(c, NULL, (const uint8_t *)"x", 1), INVALID);
  CHECK_STATUS(cmdop_write_file(c, "/tmp/cmdop-ctest-never", NULL, 5), INVALID);
  CHECK(access("/tmp/cmdop-ctest-never", F_OK) != 0);
  CHECK(cmdop_bytes_data(NULL) == NULL && cmdop_bytes_len(NULL) == 0);
  cmdop_bytes_free(NULL);

  CHECK_STATUS(cmdop_get_active_session(NULL, NULL, &s), INVALID);
  CHECK_STATUS(cmdop_get_active_session(c, NULL, NULL), INVALID);
  CHECK(s == NULL);
  CHECK_STATUS(cmdop_list_sessions(NULL, &sl), INVALID);
  CHECK_STATUS(cmdop_list_sessions(c, NULL), INVALID);
  CHECK(sl == NULL);
  CHECK(cmdop_session_list_count(NULL) == 0 && cmdop_session_list_get(NULL, 0) == NULL);
  CHECK(cmdop_session_id(NULL) == NULL);
  CHECK(cmdop_session_hostname(NULL) == NULL || cmdop_session_hostname(NULL)[0] == '\0');
  CHECK(cmdop_session_connected_at(NULL) == 0);
  cmdop_session_free(NULL);
  cmdop_session_list_free(NULL);

  CHECK_STATUS(cmdop_attach(NULL, "s", nop_output, NULL, NULL, &st), INVALID);
  CHECK_STATUS(cmdop_attach(c, NULL, nop_output, NULL, NULL, &st), INVALID);
  CHECK_STATUS(cmdop_attach(c, "s", NULL, NULL, NULL, &st), INVALID);
  CHECK_STATUS(cmdop_attach(c, "s", nop_output, NULL, NULL, NULL), INVALID);
  CHECK(st == NULL);
  CHECK_STATUS(cmdop_attachment_write(NULL, (const uint8_t *)"x", 1), INVALID);
  CHECK_STATUS(cmdop_attachment_resize(NULL, 80, 24), INVALID);
  CHECK_STATUS(cmdop_attachment_close(NULL), CMDOP_STATUS_OK);

  /* With a live stream: NULL data. */
  {
    cmdop_session *active = NULL;
    CHECK_OK(cmdop_get_active_session(c, machine, &active));
    CHECK_OK(cmdop_attach(c, cmdop_session_id(active), nop_output, NULL, NULL, &st));
    CHECK_STATUS(cmdop_attachment_write(st, NULL, 3), INVALID);
    CHECK_STATUS(cmdop_attachment_resize(st, 0, 0), INVALID);
    CHECK_OK(cmdop_attachment_close(st));
    cmdop_session_free(active);
  }

  /* Status strings for any int. */
  {
    int v;
    for (v = -5; v < 40; v++) CHECK(cmdop_status_str(v) != NULL && cmdop_status_str(v)[0] != '\0');
    CHECK(strcmp(cmdop_status_str(-1), "unknown status") == 0);
    CHECK(strcmp(cmdop_status_str(1000), "unknown status") == 0);
    CHECK(strcmp(cmdop_status_str(CMDOP_STATUS_TIMEOUT), cmdop_status_str(CMDOP_STATUS_OK)) != 0);
  }
}

static void invalid_utf8(cmdop_client *c) {
  cmdop_client *nc = NULL;
  cmdop_exec_result *r = NULL;
  cmdop_file_list *fl = NULL;
  cmdop_bytes *b = NULL;
  cmdop_session *s = NULL;
  cmdop_attachment *st = NULL;
  cmdop_options ro;
  cmdop_options lo;

  CHECK_STATUS(cmdop_remote_new(bad_utf8, NULL, &nc), INVALID);
  CHECK_ERROR_MENTIONS("UTF-8");
  CHECK_STATUS(cmdop_remote_new_oauth(bad_utf8, "r", NULL, &nc), INVALID);
  cmdop_options_init(&ro, CMDOP_OPTIONS_VERSION);
  ro.server = bad_utf8;
  CHECK_STATUS(cmdop_remote_new("k", &ro, &nc), INVALID);
  CHECK_STATUS(cmdop_local_new(bad_utf8, 1, NULL, NULL, &nc), INVALID);
  cmdop_options_init(&lo, CMDOP_OPTIONS_VERSION);
  CHECK_STATUS(cmdop_local_new("127.0.0.1", 1, bad_utf8, &lo, &nc), INVALID);
  CHECK(nc == NULL);
  CHECK_STATUS(cmdop_set_machine(c, bad_utf8), INVALID);
  CHECK_STATUS(cmdop_set_machine_id(c, bad_utf8), INVALID);
  CHECK_STATUS(cmdop_execute(c, bad_utf8, 0, &r), INVALID);
  CHECK_STATUS(cmdop_execute_with_callback(c, bad_utf8, 0, NULL, NULL, NULL, NULL, &r), INVALID);
  CHECK(r == NULL);
  CHECK_STATUS(cmdop_list_files(c, bad_utf8, &fl), INVALID);
  CHECK_STATUS(cmdop_list_files_page(c, "/", bad_utf8, false, &fl), INVALID);
  CHECK_STATUS(cmdop_read_file(c, bad_utf8, &b), INVALID);
  CHECK_STATUS(cmdop_write_file(c, bad_utf8, (const uint8_t *)"x", 1), INVALID);
  CHECK_STATUS(cmdop_get_active_session(c, bad_utf8, &s), INVALID);
  CHECK_STATUS(cmdop_attach(c, bad_utf8, nop_output, NULL, NULL, &st), INVALID);

  /* The client is still fine afterwards. */
  CHECK_OK(cmdop_execute(c, "echo ok", 0, &r));
  cmdop_exec_result_free(r);
}

struct hammer {
  cmdop_client *c;
  const char *machine;
  int index, ok;
};

static void *hammer(void *arg) {
  struct hammer *h = arg;
  char cmd[64], want[64];
  int i;
  snprintf(cmd, sizeof cmd, "echo thread-%d", h->index);
  snprintf(want, sizeof want, "thread-%d\n", h->index);
  for (i = 0; i < 10; i++) {
    cmdop_exec_result *r = NULL;
    cmdop_connection_info *info = NULL;
    cmdop_file_list *fl = NULL;
    size_t len = 0;
    const uint8_t *p;
    if (cmdop_execute(h->c, cmd, 0, &r) == CMDOP_STATUS_OK) {
      p = cmdop_exec_result_stdout(r, &len);
      if (len == strlen(want) && memcmp(p, want, len) == 0) h->ok++;
    }
    cmdop_exec_result_free(r);
    if (cmdop_get_connection_info(h->c, &info) == CMDOP_STATUS_OK) h->ok++;
    cmdop_connection_info_free(info);
    if (cmdop_list_files(h->c, "/", &fl) == CMDOP_STATUS_OK) h->ok++;
    cmdop_file_list_free(fl);
    if (cmdop_set_machine(h->c, h->machine) == CMDOP_STATUS_OK) h->ok++;
    /* An error on this thread does not leak into the others' messages. */
    if (cmdop_set_machine(h->c, "") == INVALID && cmdop_last_error_message()[0] != '\0') h->ok++;
  }
  return NULL;
}

static void many_threads(cmdop_client *c, const char *machine) {
  struct hammer h[8];
  pthread_t t[8];
  int i;
  double t0 = now_ms();
  for (i = 0; i < 8; i++) {
    h[i].c = c;
    h[i].machine = machine;
    h[i].index = i;
    h[i].ok = 0;
    CHECK(pthread_create(&t[i], NULL, hammer, &h[i]) == 0);
  }
  for (i = 0; i < 8; i++) {
    pthread_join(t[i], NULL);
    CHECK(h[i].ok == 50);
  }
  printf("8 threads x 50 calls on one client: %.0f ms\n", now_ms() - t0);
}

/* Blocking calls from inside callbacks: IN_CALLBACK, not a deadlock. */
static cmdop_client *reentrant_client;
static cmdop_status in_error_cb = CMDOP_STATUS_OK, in_output_cb = CMDOP_STATUS_OK;
static volatile int output_seen;

static void reenter_on_error(void *ud, cmdop_status status, const char *message) {
  cmdop_exec_result *r = NULL;
  (void)ud; (void)status; (void)message;
  in_error_cb = cmdop_execute(reentrant_client, "true", 0, &r);
  cmdop_exec_result_free(r);
}

static void reenter_on_output(void *ud, const uint8_t *d, size_t n) {
  cmdop_session_list *l = NULL;
  (void)ud; (void)d;
  if (n == 0 || output_seen) return;
  in_output_cb = cmdop_list_sessions(reentrant_client, &l);
  cmdop_session_list_free(l);
  output_seen = 1;
}

static void in_callbacks(cmdop_client *c, const char *machine) {
  cmdop_session *s = NULL;
  cmdop_attachment *st = NULL;
  double end;
  reentrant_client = c;
  CHECK_OK(cmdop_on_error(c, reenter_on_error, NULL, NULL));
  CHECK_STATUS(cmdop_set_machine(c, "no-such-host"), CMDOP_STATUS_NOT_FOUND);
  end = now_ms() + 3000;
  while (in_error_cb == CMDOP_STATUS_OK && now_ms() < end) sleep_ms(20);
  CHECK(in_error_cb == CMDOP_STATUS_IN_CALLBACK);
  CHECK_OK(cmdop_on_error(c, NULL, NULL, NULL));
  CHECK_OK(cmdop_set_machine(c, machine));

  CHECK_OK(cmdop_get_active_session(c, machine, &s));
  CHECK_OK(cmdop_attach(c, cmdop_session_id(s), reenter_on_output, NULL, NULL, &st));
  CHECK_OK(cmdop_attachment_write(st, (const uint8_t *)"echo reenter\n", 13));
  end = now_ms() + 5000;
  while (!output_seen && now_ms() < end) sleep_ms(20);
  CHECK(in_output_cb == CMDOP_STATUS_IN_CALLBACK);
  CHECK_OK(cmdop_attachment_close(st));
  cmdop_session_free(s);
  /* The thread's own calls outside callbacks are unaffected. */
  CHECK_OK(cmdop_on_log(CMDOP_LOG_LEVEL_OFF, NULL, NULL, NULL));
}

int main(void) {
  const char *machine = env_required("CMDOP_TEST_HOSTNAME");
  cmdop_options o = test_local_options(20000);
  cmdop_client *c = test_connect(&o);

  null_arguments(c, machine);
  invalid_utf8(c);
  many_threads(c, machine);
  in_callbacks(c, machine);
  cmdop_client_free(c);
  return check_report();
}
