/*
 * cmdop_close() ends calls in flight: an execute running on another thread
 * returns DISCONNECTED promptly and its remote command is killed; a call
 * stopped through its own cancel token returns CANCELLED. Afterwards the
 * client connects again and works. A file read in flight also ends with
 * DISCONNECTED. Runs on the native stack and on the
 * official terminal path (CMDOP_TEST_NAME says which).
 */
#include "check.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <pthread.h>

struct call {
  cmdop_client *c;
  const char *cmd;
  cmdop_cancel_token *cancel;
  cmdop_status st;
  double ended_at;
};

struct read_call {
  cmdop_client *c;
  const char *path;
  cmdop_status st;
  double ended_at;
};

static void *run_read(void *arg) {
  struct read_call *k = arg;
  cmdop_bytes *b = NULL;
  k->st = cmdop_read_file(k->c, k->path, &b);
  k->ended_at = now_ms();
  cmdop_bytes_free(b);
  return NULL;
}

static void *run_exec(void *arg) {
  struct call *k = arg;
  cmdop_exec_result *r = NULL;
  k->st = cmdop_execute_with_callback(k->c, k->cmd, 60000, NULL, NULL, NULL, k->cancel, &r);
  k->ended_at = now_ms();
  cmdop_exec_result_free(r);
  return NULL;
}

/* Start `cmd` (which writes its pid to `pidfile`) on a thread; the pid, or -1. */
static long start(struct call *k, pthread_t *t, const char *pidfile) {
  double until = now_ms() + 20000;
  long pid = -1;
  CHECK(pthread_create(t, NULL, run_exec, k) == 0);
  while (now_ms() < until && (pid = read_pid_file(pidfile)) <= 0) sleep_ms(50);
  return pid;
}

int main(void) {
  cmdop_options o = test_local_options(20000);
  cmdop_client *c = test_connect(&o);
  char pidfile[] = "/tmp/cmdop-ctest-close-XXXXXX";
  char cmd[256];
  struct call k;
  pthread_t t;
  double closed_at;
  long pid;
  int fd = mkstemp(pidfile);
  cmdop_exec_result *r = NULL;
  cmdop_cancel_token *tok = cmdop_cancel_token_new();

  CHECK(fd >= 0);
  close(fd);
  /* `exec` makes the pid the sleep's own; the subshell keeps the session's shell. */
  snprintf(cmd, sizeof cmd, "sh -c 'echo $$ > %s; exec sleep 60'", pidfile);

  /* 1. cmdop_close from this thread ends the execute on the other. */
  memset(&k, 0, sizeof k);
  k.c = c;
  k.cmd = cmd;
  pid = start(&k, &t, pidfile);
  CHECK(pid > 0);
  closed_at = now_ms();
  CHECK_OK(cmdop_close(c));
  pthread_join(t, NULL);
  printf("execute returned %s %.0f ms after cmdop_close\n", cmdop_status_str((int)k.st), k.ended_at - closed_at);
  CHECK(k.st == CMDOP_STATUS_DISCONNECTED);
  CHECK(k.ended_at - closed_at < 10000);
  if (pid > 0) CHECK(wait_process_gone(pid, 10000));

  /* 2. The client connects again; calls work (a fresh close generation). */
  CHECK_OK(cmdop_connect(c));
  CHECK_OK(cmdop_set_machine(c, env_required("CMDOP_TEST_HOSTNAME")));
  CHECK_OK(cmdop_execute(c, "echo again", 0, &r));
  CHECK(r != NULL && cmdop_exec_result_exit_code(r) == 0);
  cmdop_exec_result_free(r);

  /* 3. Its own cancel token: CANCELLED, not DISCONNECTED; still connected. */
  fd = open(pidfile, O_WRONLY | O_TRUNC);
  if (fd >= 0) close(fd);
  memset(&k, 0, sizeof k);
  k.c = c;
  k.cmd = cmd;
  k.cancel = tok;
  pid = start(&k, &t, pidfile);
  CHECK(pid > 0);
  CHECK_OK(cmdop_cancel_token_cancel(tok));
  pthread_join(t, NULL);
  CHECK(k.st == CMDOP_STATUS_CANCELLED);
  if (pid > 0) CHECK(wait_process_gone(pid, 10000));
  CHECK(cmdop_is_connected(c));

  /* 4. A file transfer in flight: reading a FIFO nobody writes to waits
   * forever on the agent; cmdop_close ends the call with DISCONNECTED. */
  {
    char fifo[64] = "/tmp/cmdop-ctest-fifo-XXXXXX";
    struct read_call rk;
    pthread_t rt;
    int wfd;
    CHECK(mkdtemp(fifo) != NULL);
    strcat(fifo, "/f");
    CHECK(mkfifo(fifo, 0600) == 0);
    memset(&rk, 0, sizeof rk);
    rk.c = c;
    rk.path = fifo;
    CHECK(pthread_create(&rt, NULL, run_read, &rk) == 0);
    sleep_ms(1000); /* the agent has opened the FIFO and waits */
    closed_at = now_ms();
    CHECK_OK(cmdop_close(c));
    pthread_join(rt, NULL);
    printf("read_file returned %s %.0f ms after cmdop_close\n", cmdop_status_str((int)rk.st),
           rk.ended_at - closed_at);
    CHECK(rk.st == CMDOP_STATUS_DISCONNECTED);
    CHECK(rk.ended_at - closed_at < 10000);
    /* Let the agent's reader go: open the writing end and close it (EOF). */
    wfd = open(fifo, O_WRONLY | O_NONBLOCK);
    if (wfd >= 0) close(wfd);
    unlink(fifo);
    *strrchr(fifo, '/') = '\0';
    rmdir(fifo);
  }

  cmdop_cancel_token_free(tok);
  unlink(pidfile);
  cmdop_client_free(c);
  return check_report();
}
