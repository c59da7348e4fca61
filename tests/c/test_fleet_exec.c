/*
 * One command on many machines (cmdop_exec_fleet) on the workspace with
 * agents alpha-one, alpha-two and bravo-host (see run.sh, start_multi):
 * host globs and selectors, per-machine exit codes, output tagged with its
 * machine and never mixed (1 MiB per machine, checked byte for byte),
 * max_failures, timeouts, cancel from a callback, the callbacks' thread and
 * finaliser, and refused arguments.
 * Each agent exports CMDOP_TEST_AGENT=<its hostname>.
 */
#include <pthread.h>

#include "check.h"

#define MAX_SEEN 8

/* What the callbacks saw, per machine (by hostname). */
typedef struct {
  pthread_t caller;
  int wrong_thread;
  int results;
  int freed;
  int in_callback_refused;
  int cancel_after; /* cancel `cancel` after this many results; 0 = never */
  cmdop_cancel_token *cancel;
  cmdop_client *client;
  struct {
    char host[64];
    size_t out_bytes, err_bytes;
    int mixed;    /* a byte that is not the machine's own pattern */
    int after_end; /* output after the machine's result */
    int ended;
  } seen[MAX_SEEN];
  int nseen;
} watch;

static int slot(watch *w, const char *host) {
  int i;
  for (i = 0; i < w->nseen; i++)
    if (strcmp(w->seen[i].host, host) == 0) return i;
  if (w->nseen == MAX_SEEN) return 0;
  snprintf(w->seen[w->nseen].host, sizeof w->seen[0].host, "%s", host);
  return w->nseen++;
}

/* stdout of `yes $CMDOP_TEST_AGENT`: "host\n" repeated; check each byte
 * against its place in that pattern. */
static void on_output(void *ud, const cmdop_machine *m, cmdop_stream_kind kind, const uint8_t *data,
                      size_t len) {
  watch *w = ud;
  const char *host = cmdop_machine_hostname(m);
  int i = slot(w, host);
  size_t hl = strlen(host) + 1, k;
  if (!pthread_equal(pthread_self(), w->caller)) w->wrong_thread = 1;
  if (w->seen[i].ended) w->seen[i].after_end = 1;
  if (kind == CMDOP_STREAM_KIND_STDERR) {
    w->seen[i].err_bytes += len;
    return;
  }
  for (k = 0; k < len; k++) {
    size_t at = (w->seen[i].out_bytes + k) % hl;
    char want = at + 1 == hl ? '\n' : host[at];
    if ((char)data[k] != want) w->seen[i].mixed = 1;
  }
  w->seen[i].out_bytes += len;
}

static void on_result(void *ud, const cmdop_fleet_result *r) {
  watch *w = ud;
  cmdop_exec_result *inner = NULL;
  int i = slot(w, cmdop_machine_hostname(cmdop_fleet_result_machine(r)));
  if (!pthread_equal(pthread_self(), w->caller)) w->wrong_thread = 1;
  w->seen[i].ended = 1;
  w->results++;
  /* A blocking call from inside a callback is refused, not a deadlock. */
  if (w->client && cmdop_execute(w->client, "true", 0, &inner) == CMDOP_STATUS_IN_CALLBACK)
    w->in_callback_refused++;
  if (w->cancel_after && w->results == w->cancel_after) cmdop_cancel_token_cancel(w->cancel);
}

static void on_free(void *ud) { ((watch *)ud)->freed++; }

static void exec_output(void *ud, cmdop_stream_kind kind, const uint8_t *data, size_t len) {
  (void)ud, (void)kind, (void)data, (void)len;
}

static watch *fresh_watch(watch *w, cmdop_client *c) {
  memset(w, 0, sizeof *w);
  w->caller = pthread_self();
  w->client = c;
  return w;
}

static const cmdop_fleet_result *result_of(const cmdop_fleet_result_list *l, size_t i,
                                           const char *host) {
  const cmdop_fleet_result *r = cmdop_fleet_result_list_get(l, i);
  CHECK(r != NULL && strcmp(cmdop_machine_hostname(cmdop_fleet_result_machine(r)), host) == 0);
  return r;
}

int main(void) {
  const char *host = env_required("CMDOP_HOST");
  uint16_t port = (uint16_t)strtol(env_required("CMDOP_PORT"), NULL, 10);
  cmdop_options o = test_local_options(20000);
  cmdop_client *c = NULL;
  watch w;

  CHECK_OK(cmdop_local_new(host, port, NULL, &o, &c));
  CHECK_OK(cmdop_connect(c));
  CHECK_OK(wait_set_machine(c, "alpha-one", 15000));
  CHECK_OK(wait_set_machine(c, "alpha-two", 15000));
  CHECK_OK(wait_set_machine(c, "bravo-host", 15000));

  /* The _INIT macro and the init function agree. */
  {
    cmdop_fleet_options a = CMDOP_FLEET_OPTIONS_INIT, b;
    memset(&b, 0xff, sizeof b);
    CHECK_OK(cmdop_fleet_options_init(&b, CMDOP_FLEET_OPTIONS_VERSION));
    CHECK(a.version == b.version && a.selector == b.selector && a.hosts == b.hosts &&
          a.parallel == b.parallel && a.batch_size == b.batch_size &&
          a.batch_percent == b.batch_percent && a.max_failures == b.max_failures &&
          a.on_output == b.on_output && a.on_result == b.on_result && a.user_data == b.user_data &&
          a.free_user_data == b.free_user_data);
    CHECK_STATUS(cmdop_fleet_options_init(&b, 99), CMDOP_STATUS_INVALID_ARGUMENT);
  }

  /* A glob: both alpha machines, 1 MiB each of their own pattern, every
   * chunk tagged with its machine; callbacks on this thread; the
   * finaliser once. */
  {
    cmdop_fleet_options f = CMDOP_FLEET_OPTIONS_INIT;
    cmdop_exec_options x = CMDOP_EXEC_OPTIONS_INIT;
    cmdop_fleet_result_list *l = NULL;
    size_t i, len = 1;
    f.hosts = "alpha-*";
    f.on_output = on_output;
    f.on_result = on_result;
    f.user_data = fresh_watch(&w, c);
    f.free_user_data = on_free;
    x.discard_output = true;
    CHECK_OK(cmdop_exec_fleet(c,
                              "yes \"$CMDOP_TEST_AGENT\" | head -c 1048576; echo oops >&2; "
                              "test \"$CMDOP_TEST_AGENT\" = alpha-one",
                              &f, &x, &l));
    CHECK(cmdop_fleet_result_list_count(l) == 2);
    CHECK(w.results == 2 && w.freed == 1 && !w.wrong_thread && w.in_callback_refused == 2);
    for (i = 0; i < (size_t)w.nseen; i++) {
      CHECK(w.seen[i].out_bytes == 1048576 && !w.seen[i].mixed && !w.seen[i].after_end);
      CHECK(w.seen[i].err_bytes == 5);
    }
    CHECK(w.nseen == 2);
    {
      const cmdop_fleet_result *r = result_of(l, 0, "alpha-one");
      CHECK(cmdop_fleet_result_status(r) == CMDOP_STATUS_OK && cmdop_fleet_result_ran(r));
      CHECK(cmdop_fleet_result_exit_code(r) == 0 && cmdop_fleet_result_signal(r) == 0);
      CHECK(strcmp(cmdop_fleet_result_message(r), "exit 0") == 0);
      /* discard_output: nothing kept. */
      CHECK(cmdop_fleet_result_stdout(r, &len) != NULL && len == 0);
      r = result_of(l, 1, "alpha-two");
      CHECK(cmdop_fleet_result_status(r) == CMDOP_STATUS_OK && cmdop_fleet_result_exit_code(r) == 1);
      CHECK(strncmp(cmdop_machine_id(cmdop_fleet_result_machine(r)), "mach_", 5) == 0);
    }
    cmdop_fleet_result_list_free(l);
  }

  /* A selector over facts, output kept; max_failures 1 with one machine
   * at a time (hostname order): alpha-one ok, alpha-two fails, bravo-host
   * never starts. */
  {
    cmdop_fleet_options f = CMDOP_FLEET_OPTIONS_INIT;
    cmdop_fleet_result_list *l = NULL;
    const cmdop_fleet_result *r;
    const uint8_t *p;
    size_t len = 0;
    f.selector = "cmdop.io/status=online,cmdop.io/os=linux";
    f.parallel = 1;
    f.max_failures = 1;
    CHECK_OK(cmdop_exec_fleet(c, "echo \"$CMDOP_TEST_AGENT\"; test \"$CMDOP_TEST_AGENT\" != alpha-two", &f,
                              NULL, &l));
    CHECK(cmdop_fleet_result_list_count(l) == 3);
    r = result_of(l, 0, "alpha-one");
    p = cmdop_fleet_result_stdout(r, &len);
    CHECK_BYTES(p, len, "alpha-one\n", 10);
    CHECK(cmdop_fleet_result_exit_code(r) == 0);
    r = result_of(l, 1, "alpha-two");
    CHECK(cmdop_fleet_result_status(r) == CMDOP_STATUS_OK && cmdop_fleet_result_exit_code(r) == 1);
    r = result_of(l, 2, "bravo-host");
    CHECK(cmdop_fleet_result_status(r) == CMDOP_STATUS_CANCELLED && !cmdop_fleet_result_ran(r));
    CHECK(strstr(cmdop_fleet_result_message(r), "max_failures") != NULL);
    CHECK(cmdop_fleet_result_duration_ms(r) == 0 && cmdop_fleet_result_exit_code(r) == -1);
    cmdop_fleet_result_list_free(l);
  }

  /* A per-machine timeout: TIMEOUT (killed, confirmed) with the output
   * printed before it, on each machine. */
  {
    cmdop_fleet_options f = CMDOP_FLEET_OPTIONS_INIT;
    cmdop_exec_options x = CMDOP_EXEC_OPTIONS_INIT;
    cmdop_fleet_result_list *l = NULL;
    size_t i, len = 0;
    f.hosts = "bravo-host,alpha-two";
    x.timeout_ms = 500;
    CHECK_OK(cmdop_exec_fleet(c, "echo started; sleep 30", &f, &x, &l));
    CHECK(cmdop_fleet_result_list_count(l) == 2);
    for (i = 0; i < cmdop_fleet_result_list_count(l); i++) {
      const cmdop_fleet_result *r = cmdop_fleet_result_list_get(l, i);
      const uint8_t *p = cmdop_fleet_result_stdout(r, &len);
      CHECK(cmdop_fleet_result_status(r) == CMDOP_STATUS_TIMEOUT && cmdop_fleet_result_ran(r));
      CHECK_BYTES(p, len, "started\n", 8);
      CHECK(cmdop_fleet_result_duration_ms(r) >= 400 && cmdop_fleet_result_duration_ms(r) < 20000);
    }
    cmdop_fleet_result_list_free(l);
  }

  /* A cancel from inside a result callback: the machines not started yet
   * end CANCELLED without running. */
  {
    cmdop_fleet_options f = CMDOP_FLEET_OPTIONS_INIT;
    cmdop_exec_options x = CMDOP_EXEC_OPTIONS_INIT;
    cmdop_fleet_result_list *l = NULL;
    cmdop_cancel_token *t = cmdop_cancel_token_new();
    f.parallel = 1;
    f.on_result = on_result;
    f.user_data = fresh_watch(&w, NULL);
    w.cancel = t;
    w.cancel_after = 1;
    x.cancel = t;
    CHECK_OK(cmdop_exec_fleet(c, "true", &f, &x, &l));
    CHECK(cmdop_fleet_result_list_count(l) == 3 && w.results == 3);
    CHECK(cmdop_fleet_result_status(result_of(l, 0, "alpha-one")) == CMDOP_STATUS_OK);
    CHECK(cmdop_fleet_result_status(result_of(l, 1, "alpha-two")) == CMDOP_STATUS_CANCELLED);
    CHECK(!cmdop_fleet_result_ran(result_of(l, 2, "bravo-host")));
    cmdop_fleet_result_list_free(l);
    cmdop_cancel_token_free(t);
  }

  /* Refused arguments, each with a message saying what to do; the
   * finalisers still run once. */
  {
    cmdop_fleet_options f = CMDOP_FLEET_OPTIONS_INIT;
    cmdop_exec_options x = CMDOP_EXEC_OPTIONS_INIT;
    cmdop_fleet_result_list *l = NULL;
    f.user_data = fresh_watch(&w, NULL);
    f.free_user_data = on_free;
    f.batch_size = 2;
    f.batch_percent = 50;
    CHECK_STATUS(cmdop_exec_fleet(c, "true", &f, NULL, &l), CMDOP_STATUS_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("set one of them");
    CHECK(w.freed == 1 && l == NULL);
    f.batch_percent = 0;
    f.batch_size = 0;
    f.selector = "env=";
    CHECK_STATUS(cmdop_exec_fleet(c, "true", &f, NULL, &l), CMDOP_STATUS_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("a value is missing");
    f.selector = "no-such-label=x";
    CHECK_STATUS(cmdop_exec_fleet(c, "true", &f, NULL, &l), CMDOP_STATUS_NOT_FOUND);
    CHECK_ERROR_MENTIONS("no machine matches");
    f.selector = NULL;
    x.user_data = &w;
    x.free_user_data = on_free;
    x.input = (cmdop_exec_stdin *)&w; /* never read: refused first */
    CHECK_STATUS(cmdop_exec_fleet(c, "true", &f, &x, &l), CMDOP_STATUS_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("stdin_data");
    x.input = NULL;
    x.on_output = exec_output;
    CHECK_STATUS(cmdop_exec_fleet(c, "true", &f, &x, &l), CMDOP_STATUS_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("fleet->on_output");
    /* Three calls with the fleet's finaliser, two with both. */
    CHECK(w.freed == 7);
    CHECK_STATUS(cmdop_exec_fleet(c, "true", NULL, NULL, &l), CMDOP_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cmdop_exec_fleet(c, NULL, &f, NULL, &l), CMDOP_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cmdop_exec_fleet(c, "true", &f, NULL, NULL), CMDOP_STATUS_INVALID_ARGUMENT);
    CHECK_STATUS(cmdop_exec_fleet(NULL, "true", &f, NULL, &l), CMDOP_STATUS_INVALID_ARGUMENT);
    CHECK(w.freed == 10 && l == NULL);
    CHECK(cmdop_fleet_result_list_count(NULL) == 0 && cmdop_fleet_result_list_get(NULL, 0) == NULL);
    CHECK(cmdop_fleet_result_status(NULL) == CMDOP_STATUS_INVALID_ARGUMENT);
    cmdop_fleet_result_list_free(NULL);
  }

  cmdop_client_free(c);
  return check_report();
}
