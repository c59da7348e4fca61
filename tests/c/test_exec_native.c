/*
 * cmdop_execute on the native path (`cmdop dev`, extension on): stdout and
 * stderr apart, exit codes, signals, exact bytes, 64 MiB of output, and the
 * timeout, which must kill the remote process (checked through /proc: the
 * agent runs on this machine).
 */
#include "check.h"

#include <signal.h>

#define MIB (1024u * 1024u)

static void streams_and_codes(cmdop_client *c) {
  cmdop_exec_result *r = NULL;
  const uint8_t *p;
  size_t len;

  RUN(c, "echo out; sleep 0.1; echo err >&2; sleep 0.1; echo out2", 0, &r);
  CHECK(cmdop_exec_result_native(r));
  CHECK(cmdop_exec_result_exit_code(r) == 0);
  CHECK(cmdop_exec_result_signal(r) == 0);
  CHECK(!cmdop_exec_result_timed_out(r));
  CHECK(!cmdop_exec_result_truncated(r));
  p = cmdop_exec_result_stdout(r, &len);
  CHECK_BYTES(p, len, "out\nout2\n", 9);
  p = cmdop_exec_result_stderr(r, &len);
  CHECK_BYTES(p, len, "err\n", 4);
  p = cmdop_exec_result_output(r, &len);
  CHECK_BYTES(p, len, "out\nerr\nout2\n", 13);
  CHECK(cmdop_exec_result_duration_ms(r) >= 200);
  CHECK(cmdop_exec_result_duration_ms(r) < 10000);
  cmdop_exec_result_free(r);

  RUN(c, "exit 1", 0, &r);
  CHECK(cmdop_exec_result_exit_code(r) == 1);
  cmdop_exec_result_free(r);
  RUN(c, "echo seven >&2; exit 7", 0, &r);
  CHECK(cmdop_exec_result_exit_code(r) == 7);
  p = cmdop_exec_result_stderr(r, &len);
  CHECK_BYTES(p, len, "seven\n", 6);
  p = cmdop_exec_result_stdout(r, &len);
  CHECK(len == 0);
  cmdop_exec_result_free(r);

  /* No output at all. */
  RUN(c, "true", 0, &r);
  p = cmdop_exec_result_output(r, &len);
  CHECK(len == 0);
  CHECK(cmdop_exec_result_exit_code(r) == 0);
  cmdop_exec_result_free(r);

  /* Unknown command: the shell says so on stderr, exit 127. */
  RUN(c, "cmdop-no-such-command-xyz", 0, &r);
  CHECK(cmdop_exec_result_exit_code(r) == 127);
  p = cmdop_exec_result_stderr(r, &len);
  CHECK(bytes_contain(p, len, "cmdop-no-such-command-xyz"));
  cmdop_exec_result_free(r);

  /* Killed by a signal: exit code -1, the signal number. */
  RUN(c, "kill -TERM $$", 0, &r);
  CHECK(cmdop_exec_result_exit_code(r) == -1);
  CHECK(cmdop_exec_result_signal(r) == SIGTERM);
  cmdop_exec_result_free(r);
  RUN(c, "kill -KILL $$", 0, &r);
  CHECK(cmdop_exec_result_signal(r) == SIGKILL);
  cmdop_exec_result_free(r);
}

static void exact_bytes(cmdop_client *c) {
  cmdop_exec_result *r = NULL;
  const uint8_t *p;
  size_t len, i;
  uint8_t all[256];
  static const char utf8[] = "h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x9a\x80\n";

  /* Every byte value, including NUL and invalid UTF-8, comes back as is. */
  for (i = 0; i < 256; i++) all[i] = (uint8_t)i;
  RUN(c, "i=0; while [ $i -lt 256 ]; do printf \"\\\\$(printf %o $i)\"; i=$((i+1)); done", 0, &r);
  p = cmdop_exec_result_stdout(r, &len);
  CHECK_BYTES(p, len, all, sizeof all);
  cmdop_exec_result_free(r);

  RUN(c, "printf 'h\\303\\251llo \\342\\202\\254 \\360\\237\\232\\200\\n'", 0, &r);
  p = cmdop_exec_result_stdout(r, &len);
  CHECK_BYTES(p, len, utf8, sizeof utf8 - 1);
  cmdop_exec_result_free(r);

  /* No trailing newline is added or removed. */
  RUN(c, "printf 'no-newline'", 0, &r);
  p = cmdop_exec_result_stdout(r, &len);
  CHECK_BYTES(p, len, "no-newline", 10);
  cmdop_exec_result_free(r);
}

static void huge_output(cmdop_client *c) {
  cmdop_exec_result *r = NULL;
  const uint8_t *p;
  size_t len, i, bad = 0;
  double t0 = now_ms();

  /* 64 MiB, the per-stream cap: all of it, not truncated. Byte value
   * 'x' everywhere, so corruption or loss shows. */
  CHECK_OK(cmdop_execute(c, "head -c 67108864 /dev/zero | tr '\\0' x", 120000, &r));
  p = cmdop_exec_result_stdout(r, &len);
  CHECK(len == 64 * MIB);
  for (i = 0; p != NULL && i < len; i++) bad += p[i] != 'x';
  CHECK(bad == 0);
  CHECK(!cmdop_exec_result_truncated(r));
  CHECK(cmdop_exec_result_exit_code(r) == 0);
  printf("64 MiB of output in %.0f ms\n", now_ms() - t0);
  cmdop_exec_result_free(r);
  r = NULL;

  /* Beyond the cap: kept up to 64 MiB, flagged, the command still succeeds. */
  CHECK_OK(cmdop_execute(c, "head -c 67112960 /dev/zero", 120000, &r));
  p = cmdop_exec_result_stdout(r, &len);
  CHECK(len == 64 * MIB);
  CHECK(cmdop_exec_result_truncated(r));
  CHECK(cmdop_exec_result_exit_code(r) == 0);
  cmdop_exec_result_free(r);
}

static void timeouts(cmdop_client *c) {
  char pidfile[] = "/tmp/cmdop-ctest-pid-XXXXXX";
  char cmd[256];
  cmdop_exec_result *r = NULL;
  const uint8_t *p;
  size_t len;
  double t0;
  long pid;
  int fd = mkstemp(pidfile);

  CHECK(fd >= 0);
  if (fd >= 0) close(fd);
  snprintf(cmd, sizeof cmd, "echo $$ > %s; echo partial; echo err-partial >&2; sleep 60", pidfile);
  t0 = now_ms();
  CHECK_STATUS(cmdop_execute(c, cmd, 1000, &r), CMDOP_STATUS_TIMEOUT);
  CHECK(now_ms() - t0 >= 900);
  CHECK(now_ms() - t0 < 6000);
  CHECK(r != NULL);
  CHECK(cmdop_last_error_message()[0] != '\0');
  CHECK(cmdop_exec_result_timed_out(r));
  CHECK(cmdop_exec_result_exit_code(r) == -1);
  p = cmdop_exec_result_stdout(r, &len);
  CHECK_BYTES(p, len, "partial\n", 8);
  p = cmdop_exec_result_stderr(r, &len);
  CHECK_BYTES(p, len, "err-partial\n", 12);
  cmdop_exec_result_free(r);
  r = NULL;
  pid = read_pid_file(pidfile);
  CHECK(pid > 0);
  if (pid > 0) CHECK(wait_process_gone(pid, 3000)); /* the remote shell was killed */
  unlink(pidfile);

  /* timeout_ms 0 = the client's timeout (3 s for this client). */
  t0 = now_ms();
  CHECK_STATUS(cmdop_execute(c, "sleep 30", 0, &r), CMDOP_STATUS_TIMEOUT);
  CHECK(now_ms() - t0 >= 2500 && now_ms() - t0 < 9000);
  cmdop_exec_result_free(r);
  r = NULL;

  /* The machine is usable right after. */
  RUN(c, "echo after", 0, &r);
  p = cmdop_exec_result_output(r, &len);
  CHECK_BYTES(p, len, "after\n", 6);
  cmdop_exec_result_free(r);
}

int main(void) {
  cmdop_options o = test_local_options(3000);
  cmdop_client *c = test_connect(&o);

  streams_and_codes(c);
  exact_bytes(c);
  timeouts(c);
  huge_output(c);
  cmdop_client_free(c);
  return check_report();
}
