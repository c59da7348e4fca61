/*
 * cmdop_execute on the fallback path: a control plane without the libcmdop
 * extension (`cmdop dev --no-extensions`), where the library types the
 * command into the session's terminal like the official SDKs. Output is
 * merged (a terminal has one stream), exit codes and timeouts still work.
 */
#include "check.h"

/* Adds each chunk's length to counts[kind]. */
static void count_chunk(void *ud, cmdop_stream_kind kind, const uint8_t *data, size_t len) {
  size_t *counts = ud;
  (void)data;
  if (kind == CMDOP_STREAM_KIND_STDOUT || kind == CMDOP_STREAM_KIND_STDERR) counts[kind] += len;
}

int main(void) {
  cmdop_options o = test_local_options(4000);
  cmdop_client *c = test_connect(&o);
  cmdop_exec_result *r = NULL;
  const uint8_t *p;
  size_t len;
  char pidfile[] = "/tmp/cmdop-ctest-pid-XXXXXX";
  char cmd[256];
  double t0;
  long pid;
  int fd, i;

  RUN(c, "echo hello", 0, &r);
  CHECK(!cmdop_exec_result_native(r));
  CHECK(cmdop_exec_result_exit_code(r) == 0);
  p = cmdop_exec_result_output(r, &len);
  CHECK_BYTES(p, len, "hello\n", 6);
  p = cmdop_exec_result_stdout(r, &len);
  CHECK_BYTES(p, len, "hello\n", 6);
  p = cmdop_exec_result_stderr(r, &len);
  CHECK(len == 0);
  cmdop_exec_result_free(r);

  /* Exit codes 0, 1, 7 and merged stderr. */
  RUN(c, "false", 0, &r);
  CHECK(cmdop_exec_result_exit_code(r) == 1);
  cmdop_exec_result_free(r);
  RUN(c, "echo out; echo err >&2; exit 7", 0, &r);
  CHECK(cmdop_exec_result_exit_code(r) == 7);
  p = cmdop_exec_result_output(r, &len);
  CHECK(bytes_contain(p, len, "out") && bytes_contain(p, len, "err"));
  cmdop_exec_result_free(r);
  RUN(c, "true", 0, &r);
  CHECK(cmdop_exec_result_exit_code(r) == 0);
  cmdop_exec_result_free(r);

  /* Several lines, in order, nothing of the marker technique leaking. */
  RUN(c, "seq 1 5", 0, &r);
  p = cmdop_exec_result_output(r, &len);
  CHECK_BYTES(p, len, "1\n2\n3\n4\n5\n", 10);
  cmdop_exec_result_free(r);

  /* A bigger output: exact length (the terminal turns \n into \r\n; the
   * library must give back what the command printed). */
  RUN(c, "seq 1 20000", 30000, &r);
  p = cmdop_exec_result_output(r, &len);
  CHECK(len == 108894);
  CHECK(cmdop_exec_result_exit_code(r) == 0);
  cmdop_exec_result_free(r);

  /* Timeout: partial output, the process killed, the session still usable. */
  fd = mkstemp(pidfile);
  CHECK(fd >= 0);
  if (fd >= 0) close(fd);
  snprintf(cmd, sizeof cmd, "sh -c 'echo $$ > %s; echo partial; exec sleep 60'", pidfile);
  t0 = now_ms();
  CHECK_STATUS(cmdop_execute(c, cmd, 1500, &r), CMDOP_STATUS_TIMEOUT);
  CHECK(now_ms() - t0 < 8000);
  CHECK(r != NULL);
  CHECK(cmdop_exec_result_timed_out(r));
  p = cmdop_exec_result_output(r, &len);
  CHECK(bytes_contain(p, len, "partial"));
  cmdop_exec_result_free(r);
  r = NULL;
  pid = read_pid_file(pidfile);
  CHECK(pid > 0);
  if (pid > 0) CHECK(wait_process_gone(pid, 3000));
  unlink(pidfile);
  for (i = 0; i < 3; i++) {
    RUN(c, "echo after", 0, &r);
    p = cmdop_exec_result_output(r, &len);
    CHECK_BYTES(p, len, "after\n", 6);
    cmdop_exec_result_free(r);
    r = NULL;
  }

  /* Machine ids need the extension. */
  CHECK_STATUS(cmdop_set_machine_id(c, "mach_0000000000000000"), CMDOP_STATUS_NOT_SUPPORTED);
  CHECK_ERROR_MENTIONS("hostname");

  /* Streaming works on this path too (chunks all marked stdout). */
  {
    size_t counts[3] = {0, 0, 0};
    CHECK_OK(cmdop_execute_with_callback(c, "echo streamed; echo e >&2", 0, count_chunk, counts, NULL, NULL, &r));
    CHECK(counts[CMDOP_STREAM_KIND_STDOUT] == strlen("streamed\ne\n"));
    CHECK(counts[CMDOP_STREAM_KIND_STDERR] == 0);
    cmdop_exec_result_free(r);
  }

  cmdop_client_free(c);
  return check_report();
}
