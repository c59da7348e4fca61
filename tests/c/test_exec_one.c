/*
 * cmdop_exec(), the one execute: every option of cmdop_exec_options
 * version 2 (output callback with user_data and its finaliser, cancel
 * token, streamed stdin, discard) through one entry point; the _INIT
 * macros equal the init functions; a caller built against version 1 of
 * the layout (a struct in a heap block of exactly that size, so ASan stops
 * any read past it) still works; writes to a stdin stream after its
 * execute returned always fail. Native `cmdop dev` stack.
 */
#include "check.h"

#include <pthread.h>

/* Version 1 of cmdop_exec_options, frozen here: what a program built
 * against that header passes. Never edit. */
struct exec_options_v1 {
  uint32_t version;
  uint32_t timeout_ms;
  const uint8_t *stdin_data;
  size_t stdin_len;
  const char *const *env;
  size_t env_count;
  const char *working_directory;
  bool discard_output;
};

struct sink {
  size_t bytes, calls, freed;
  char text[256];
  size_t text_len;
};

static void on_output(void *ud, cmdop_stream_kind kind, const uint8_t *data, size_t len) {
  struct sink *s = ud;
  size_t room = sizeof s->text - s->text_len;
  (void)kind;
  s->calls++;
  s->bytes += len;
  memcpy(s->text + s->text_len, data, len < room ? len : room);
  s->text_len += len < room ? len : room;
}

static void free_sink(void *ud) { __atomic_add_fetch(&((struct sink *)ud)->freed, 1, __ATOMIC_SEQ_CST); }

static void *cancel_later(void *arg) {
  sleep_ms(300);
  cmdop_cancel_token_cancel(arg);
  return NULL;
}

struct feeder {
  cmdop_exec_stdin *in;
  cmdop_status write, close;
};

static void *feed(void *arg) {
  struct feeder *f = arg;
  f->write = cmdop_exec_stdin_write(f->in, (const uint8_t *)"streamed\n", 9);
  f->close = cmdop_exec_stdin_close(f->in);
  return NULL;
}

static void macros_equal_init(void) {
  cmdop_exec_options m = CMDOP_EXEC_OPTIONS_INIT, f;
  cmdop_transfer_options tm = CMDOP_TRANSFER_OPTIONS_INIT, tf;
  memset(&f, 0xA5, sizeof f);
  CHECK_OK(cmdop_exec_options_init(&f, CMDOP_EXEC_OPTIONS_VERSION));
  CHECK(m.version == f.version && m.timeout_ms == f.timeout_ms && m.stdin_data == f.stdin_data &&
        m.stdin_len == f.stdin_len && m.env == f.env && m.env_count == f.env_count &&
        m.working_directory == f.working_directory && m.discard_output == f.discard_output &&
        m.on_output == f.on_output && m.user_data == f.user_data &&
        m.free_user_data == f.free_user_data && m.cancel == f.cancel && m.input == f.input);
  memset(&tf, 0xA5, sizeof tf);
  CHECK_OK(cmdop_transfer_options_init(&tf, CMDOP_TRANSFER_OPTIONS_VERSION));
  CHECK(tm.version == tf.version && tm.keep_mode == tf.keep_mode && tm.no_clobber == tf.no_clobber &&
        tm.create_parents == tf.create_parents);
}

int main(void) {
  cmdop_options co = test_local_options(20000);
  cmdop_client *c = test_connect(&co);
  cmdop_exec_options o = CMDOP_EXEC_OPTIONS_INIT;
  cmdop_exec_result *r = NULL;
  struct sink s;
  const uint8_t *p;
  size_t len = 0;

  macros_equal_init();
  if (c == NULL) return check_report();

  /* NULL options: the defaults. */
  CHECK_OK(cmdop_exec(c, "echo plain", NULL, &r));
  p = cmdop_exec_result_stdout(r, &len);
  CHECK_BYTES(p, len, "plain\n", 6);
  cmdop_exec_result_free(r);
  r = NULL;

  /* Output to the callback and kept in the result; the finaliser once. */
  memset(&s, 0, sizeof s);
  o.on_output = on_output;
  o.user_data = &s;
  o.free_user_data = free_sink;
  CHECK_OK(cmdop_exec(c, "echo one; echo two >&2", &o, &r));
  CHECK(s.freed == 1);
  CHECK(s.bytes == 8 && s.calls >= 1);
  p = cmdop_exec_result_output(r, &len);
  CHECK(len == 8);
  cmdop_exec_result_free(r);
  r = NULL;

  /* Discard: the callback sees it all, the result keeps none. */
  memset(&s, 0, sizeof s);
  o.discard_output = true;
  CHECK_OK(cmdop_exec(c, "head -c 100000 /dev/zero", &o, &r));
  CHECK(s.bytes == 100000 && s.freed == 1);
  cmdop_exec_result_output(r, &len);
  CHECK(len == 0);
  cmdop_exec_result_free(r);
  r = NULL;
  o.discard_output = false;

  /* The finaliser runs on a refused argument too, once. */
  memset(&s, 0, sizeof s);
  CHECK_STATUS(cmdop_exec(c, NULL, &o, &r), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(s.freed == 1 && r == NULL);
  CHECK_STATUS(cmdop_exec(NULL, "true", &o, &r), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(s.freed == 2);
  CHECK_STATUS(cmdop_exec(c, "true", &o, NULL), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(s.freed == 3);
  /* An unknown version cannot be read: refused, the error says how. */
  o.version = 77;
  CHECK_STATUS(cmdop_exec(c, "true", &o, &r), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK_ERROR_MENTIONS("cmdop_exec_options version 77");
  o.version = CMDOP_EXEC_OPTIONS_VERSION;

  /* Cancel from another thread: CANCELLED promptly. */
  {
    cmdop_cancel_token *t = cmdop_cancel_token_new();
    pthread_t th;
    double t0 = now_ms();
    memset(&s, 0, sizeof s);
    o.cancel = t;
    CHECK(pthread_create(&th, NULL, cancel_later, t) == 0);
    CHECK_STATUS(cmdop_exec(c, "echo started; sleep 30", &o, &r), CMDOP_STATUS_CANCELLED);
    CHECK(now_ms() - t0 < 10000);
    pthread_join(th, NULL);
    /* After a cancel the finaliser may run just after the return, on the
     * library's thread, once its delivery thread has noticed. */
    {
      int waited = 0;
      while (__atomic_load_n(&s.freed, __ATOMIC_SEQ_CST) == 0 && waited++ < 2000) sleep_ms(1);
    }
    CHECK(__atomic_load_n(&s.freed, __ATOMIC_SEQ_CST) == 1);
    cmdop_exec_result_free(r);
    r = NULL;
    o.cancel = NULL;
    cmdop_cancel_token_free(t);
  }

  /* Streamed stdin after stdin_data, through the same options. */
  {
    struct feeder f;
    pthread_t th;
    memset(&s, 0, sizeof s);
    CHECK_OK(cmdop_exec_stdin_new(&f.in));
    o.stdin_data = (const uint8_t *)"first\n";
    o.stdin_len = 6;
    o.input = f.in;
    CHECK(pthread_create(&th, NULL, feed, &f) == 0);
    CHECK_OK(cmdop_exec(c, "cat", &o, &r));
    pthread_join(th, NULL);
    CHECK(f.write == CMDOP_STATUS_OK && f.close == CMDOP_STATUS_OK);
    p = cmdop_exec_result_stdout(r, &len);
    CHECK_BYTES(p, len, "first\nstreamed\n", 15);
    cmdop_exec_result_free(r);
    r = NULL;
    /* Used: a second execute with it is refused. */
    CHECK_STATUS(cmdop_exec(c, "cat", &o, &r), CMDOP_STATUS_INVALID_ARGUMENT);
    CHECK_ERROR_MENTIONS("already used");
    cmdop_exec_stdin_free(f.in);
    o.input = NULL;
    o.stdin_data = NULL;
    o.stdin_len = 0;
  }

  /* A write right after the execute returned fails, every time (it used
   * to answer OK now and then, the bytes silently dropped). */
  {
    int i, ok_after_end = 0;
    for (i = 0; i < 20; i++) {
      cmdop_exec_stdin *in = NULL;
      cmdop_exec_options so = CMDOP_EXEC_OPTIONS_INIT;
      CHECK_OK(cmdop_exec_stdin_new(&in));
      so.input = in;
      CHECK_OK(cmdop_exec(c, "true", &so, &r));
      cmdop_exec_result_free(r);
      r = NULL;
      if (cmdop_exec_stdin_write(in, (const uint8_t *)"late", 4) != CMDOP_STATUS_OPERATION_FAILED)
        ok_after_end++;
      cmdop_exec_stdin_free(in);
    }
    CHECK(ok_after_end == 0);
  }

  /* A version-1 caller: its struct in a block of exactly that size. */
  {
    struct exec_options_v1 *v1 = malloc(sizeof *v1);
    CHECK(v1 != NULL);
    if (v1) {
      CHECK_OK(cmdop_exec_options_init((cmdop_exec_options *)v1, 1));
      CHECK(v1->version == 1 && v1->timeout_ms == 0 && v1->discard_output == false);
      v1->stdin_data = (const uint8_t *)"v1\n";
      v1->stdin_len = 3;
      CHECK_OK(cmdop_exec(c, "cat", (const cmdop_exec_options *)v1, &r));
      p = cmdop_exec_result_stdout(r, &len);
      CHECK_BYTES(p, len, "v1\n", 3);
      cmdop_exec_result_free(r);
      r = NULL;
      memset(&s, 0, sizeof s);
      CHECK_OK(cmdop_execute_with_options(c, "cat", (const cmdop_exec_options *)v1, on_output, &s,
                                          free_sink, NULL, &r));
      CHECK(s.bytes == 3 && s.freed == 1);
      cmdop_exec_result_free(r);
      r = NULL;
      free(v1);
    }
  }

  cmdop_client_free(c);
  return check_report();
}
