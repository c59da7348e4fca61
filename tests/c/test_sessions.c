/*
 * Sessions: the active session of a machine, the workspace's sessions, and
 * attaching to a session's terminal (live output after typing into it,
 * resize, close). Native `cmdop dev` stack.
 */
#include "check.h"

#include <pthread.h>

struct capture {
  pthread_mutex_t mu;
  char buf[65536];
  size_t len;
  size_t calls;
  int ended;
  cmdop_attachment *close_me; /* closed from inside the callback when set */
};

/* The attachment's finaliser: counts its calls. */
static pthread_mutex_t freed_mu = PTHREAD_MUTEX_INITIALIZER;
static int freed;
static void on_free(void *ud) {
  (void)ud;
  pthread_mutex_lock(&freed_mu);
  freed++;
  pthread_mutex_unlock(&freed_mu);
}
static int freed_count(void) {
  int n;
  pthread_mutex_lock(&freed_mu);
  n = freed;
  pthread_mutex_unlock(&freed_mu);
  return n;
}

static void on_output(void *ud, const uint8_t *data, size_t len) {
  struct capture *cap = ud;
  pthread_mutex_lock(&cap->mu);
  cap->calls++;
  if (data == NULL) {
    cap->ended = 1;
  } else {
    size_t room = sizeof cap->buf - 1 - cap->len;
    size_t n = len < room ? len : room;
    memcpy(cap->buf + cap->len, data, n);
    cap->len += n;
    cap->buf[cap->len] = '\0';
  }
  pthread_mutex_unlock(&cap->mu);
}

/* Wait up to `ms` for `needle` in the captured output. */
static int wait_output(struct capture *cap, const char *needle, long ms) {
  double end = now_ms() + (double)ms;
  int found;
  do {
    pthread_mutex_lock(&cap->mu);
    found = strstr(cap->buf, needle) != NULL;
    pthread_mutex_unlock(&cap->mu);
    if (found) return 1;
    sleep_ms(50);
  } while (now_ms() < end);
  return 0;
}

static size_t calls_of(struct capture *cap) {
  size_t n;
  pthread_mutex_lock(&cap->mu);
  n = cap->calls;
  pthread_mutex_unlock(&cap->mu);
  return n;
}

int main(void) {
  const char *machine = env_required("CMDOP_TEST_HOSTNAME");
  cmdop_options o = test_local_options(10000);
  cmdop_client *c = test_connect(&o);
  cmdop_session *s = NULL, *any = NULL;
  cmdop_session_list *list = NULL;
  cmdop_attachment *st = NULL;
  static struct capture cap;
  char *id = NULL;
  size_t i;
  int found = 0;

  /* The active session, by hostname and without one. */
  CHECK_OK(cmdop_get_active_session(c, machine, &s));
  CHECK(s != NULL);
  if (s) {
    id = strdup(cmdop_session_id(s));
    printf("session %s host %s status %s os %s shell %s connected_at %lld heartbeat_age %lld\n",
           cmdop_session_id(s), cmdop_session_hostname(s), cmdop_session_status(s), cmdop_session_os(s),
           cmdop_session_shell(s), (long long)cmdop_session_connected_at(s),
           (long long)cmdop_session_heartbeat_age(s));
    CHECK(cmdop_session_id(s)[0] != '\0');
    CHECK(strcmp(cmdop_session_hostname(s), machine) == 0);
    CHECK(strcmp(cmdop_session_status(s), "connected") == 0);
    CHECK(cmdop_session_os(s) != NULL && cmdop_session_os(s)[0] != '\0');
    CHECK(cmdop_session_shell(s) != NULL);
    CHECK(cmdop_session_connected_at(s) > 1600000000);
    CHECK(cmdop_session_connected_at(s) <= (int64_t)time(NULL) + 5);
    CHECK(cmdop_session_heartbeat_age(s) >= 0 && cmdop_session_heartbeat_age(s) < 120);
  }
  CHECK_OK(cmdop_get_active_session(c, NULL, &any));
  CHECK(any != NULL && id != NULL && strcmp(cmdop_session_id(any), id) == 0);
  cmdop_session_free(any);
  any = (cmdop_session *)&o;
  CHECK_STATUS(cmdop_get_active_session(c, "no-such-host-xyz", &any), CMDOP_STATUS_NOT_FOUND);
  CHECK(any == NULL);

  /* The workspace's sessions include ours. */
  CHECK_OK(cmdop_list_sessions(c, &list));
  CHECK(cmdop_session_list_count(list) >= 1);
  for (i = 0; i < cmdop_session_list_count(list); i++) {
    const cmdop_session *e = cmdop_session_list_get(list, i);
    CHECK(e != NULL);
    if (e && id && strcmp(cmdop_session_id(e), id) == 0) {
      found = 1;
      CHECK(strcmp(cmdop_session_hostname(e), machine) == 0);
      CHECK(strcmp(cmdop_session_status(e), "connected") == 0);
    }
  }
  CHECK(found);
  CHECK(cmdop_session_list_get(list, cmdop_session_list_count(list)) == NULL);
  cmdop_session_list_free(list);

  /* Attach: typing a command shows its (computed) output live. */
  pthread_mutex_init(&cap.mu, NULL);
  CHECK_OK(cmdop_attach(c, id, on_output, &cap, on_free, &st));
  CHECK(st != NULL);
  if (st) {
    const char *typed = "echo attach-marker-$((6*7))\n";
    CHECK_OK(cmdop_attachment_resize(st, 120, 40));
    CHECK_OK(cmdop_attachment_write(st, (const uint8_t *)typed, strlen(typed)));
    CHECK(wait_output(&cap, "attach-marker-42", 5000));
    /* Output of commands run through execute is visible too, on the
     * terminal path; typing more keeps working. */
    CHECK_OK(cmdop_attachment_write(st, (const uint8_t *)"echo second-$((1+1))\n", 21));
    CHECK(wait_output(&cap, "second-2", 5000));
    CHECK_OK(cmdop_attachment_close(st));
    {
      /* After close returns, the callback is not called again, and the
       * finaliser has run exactly once. */
      size_t n = calls_of(&cap);
      sleep_ms(300);
      CHECK(calls_of(&cap) == n);
      CHECK(freed_count() == 1);
    }
  }

  /* Unknown session. */
  st = (cmdop_attachment *)&o;
  CHECK_STATUS(cmdop_attach(c, "sess_does_not_exist", on_output, &cap, on_free, &st), CMDOP_STATUS_NOT_FOUND);
  CHECK(st == NULL);
  CHECK(freed_count() == 2); /* a failed attach finalises its user_data too */
  CHECK_STATUS(cmdop_attach(c, id, NULL, &cap, on_free, &st), CMDOP_STATUS_INVALID_ARGUMENT);
  CHECK(freed_count() == 3);
  CHECK_STATUS(cmdop_attachment_close(NULL), CMDOP_STATUS_OK);

  /* Closing the client ends an attached stream: the end-of-stream call. */
  {
    static struct capture cap2;
    cmdop_attachment *st2 = NULL;
    pthread_mutex_init(&cap2.mu, NULL);
    CHECK_OK(cmdop_attach(c, id, on_output, &cap2, NULL, &st2));
    CHECK_OK(cmdop_close(c));
    {
      double end = now_ms() + 3000;
      while (now_ms() < end) {
        int ended;
        pthread_mutex_lock(&cap2.mu);
        ended = cap2.ended;
        pthread_mutex_unlock(&cap2.mu);
        if (ended) break;
        sleep_ms(50);
      }
    }
    CHECK(cap2.ended);
    if (st2) CHECK_STATUS(cmdop_attachment_write(st2, (const uint8_t *)"x", 1), CMDOP_STATUS_DISCONNECTED);
    CHECK_OK(cmdop_attachment_close(st2));
    pthread_mutex_destroy(&cap2.mu);
  }

  cmdop_session_free(s);
  cmdop_session_free(NULL);
  cmdop_session_list_free(NULL);
  CHECK(cmdop_session_list_count(NULL) == 0);
  CHECK(cmdop_session_id(NULL) == NULL);
  free(id);
  cmdop_client_free(c);
  pthread_mutex_destroy(&cap.mu);
  return check_report();
}
