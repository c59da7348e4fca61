/*
 * Every drop is reported, and a lost connection is UNAVAILABLE:
 *  - the control plane is SIGKILLed and back on the same port about 1 s
 *    later, with no call running: on_disconnect(will_reconnect=true) and a
 *    second on_connect both fire (the health probe alone, every 5 s, would
 *    find the server back and say nothing);
 *  - SIGKILL during an execute and during a large write: UNAVAILABLE,
 *    never INTERNAL;
 *  - writes to a socket whose peer died never kill this program with
 *    SIGPIPE (left at its default action here, as in most C programs):
 *    the library's runtime threads block it.
 * Uses its own `cmdop server` + agent (tests/c/stack_ctl.sh).
 */
#include "events.h"

#include <dirent.h>
#include <signal.h>

/* How many of this process's threads are the library's runtime threads
 * ("cmdop-runtime"), and how many of those have SIGPIPE blocked. */
static void runtime_threads(int *count, int *blocking) {
  DIR *d = opendir("/proc/self/task");
  struct dirent *e;
  *count = *blocking = 0;
  if (d == NULL) return;
  while ((e = readdir(d)) != NULL) {
    char path[300], line[256];
    FILE *f;
    int runtime = 0;
    if (e->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    if ((f = fopen(path, "r")) != NULL) {
      runtime = fgets(line, sizeof line, f) != NULL && strncmp(line, "cmdop-runtime", 13) == 0;
      fclose(f);
    }
    if (!runtime) continue;
    (*count)++;
    snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
    if ((f = fopen(path, "r")) == NULL) continue;
    while (fgets(line, sizeof line, f) != NULL) {
      unsigned long long mask;
      if (sscanf(line, "SigBlk: %llx", &mask) == 1 && (mask & (1ULL << (SIGPIPE - 1)))) (*blocking)++;
    }
    fclose(f);
  }
  closedir(d);
}

struct times {
  pthread_mutex_t mu;
  double disconnect_ms, reconnect_ms; /* first after `armed` */
  int armed;
};
static struct times tm;
static struct events ev;

static void on_connect_t(void *ud) {
  (void)ud;
  events_on_connect(&ev);
  pthread_mutex_lock(&tm.mu);
  if (tm.armed && tm.reconnect_ms == 0) tm.reconnect_ms = now_ms();
  pthread_mutex_unlock(&tm.mu);
}

static void on_disconnect_t(void *ud, const char *reason, bool will_reconnect) {
  (void)ud;
  events_on_disconnect(&ev, reason, will_reconnect);
  pthread_mutex_lock(&tm.mu);
  if (tm.armed && tm.disconnect_ms == 0) tm.disconnect_ms = now_ms();
  pthread_mutex_unlock(&tm.mu);
}

static void arm(void) {
  pthread_mutex_lock(&tm.mu);
  tm.armed = 1;
  tm.disconnect_ms = tm.reconnect_ms = 0;
  pthread_mutex_unlock(&tm.mu);
}

struct call {
  cmdop_client *c;
  const char *command;
  uint8_t *data;
  size_t len;
  cmdop_status status;
  char message[512];
  double done_ms;
};

static void *run_execute(void *arg) {
  struct call *k = arg;
  cmdop_exec_result *r = NULL;
  k->status = cmdop_execute(k->c, k->command, 30000, &r);
  snprintf(k->message, sizeof k->message, "%s", cmdop_last_error_message());
  k->done_ms = now_ms();
  cmdop_exec_result_free(r);
  return NULL;
}

static void *run_write(void *arg) {
  struct call *k = arg;
  k->status = cmdop_write_file(k->c, "/tmp/cmdop-c-test-restart.bin", k->data, k->len);
  snprintf(k->message, sizeof k->message, "%s", cmdop_last_error_message());
  k->done_ms = now_ms();
  return NULL;
}

/* Execute `true` until the agent is back (up to `ms`). */
static int wait_agent(cmdop_client *c, long ms) {
  double end = now_ms() + (double)ms;
  while (now_ms() < end) {
    cmdop_exec_result *r = NULL;
    cmdop_status s = cmdop_execute(c, "true", 5000, &r);
    cmdop_exec_result_free(r);
    if (s == CMDOP_STATUS_OK) return 1;
    sleep_ms(200);
  }
  return 0;
}

int main(void) {
  const char *host = env_required("CMDOP_HOST");
  uint16_t port = (uint16_t)strtol(env_required("CMDOP_PORT"), NULL, 10);
  cmdop_options o = test_local_options(10000);
  cmdop_client *c = NULL;
  cmdop_exec_result *r = NULL;
  double killed, started;
  int connects;

  events_init(&ev);
  pthread_mutex_init(&tm.mu, NULL);
  o.auto_reconnect = true;
  o.reconnect_delay_ms = 200;
  o.max_reconnect_delay_ms = 1000;
  o.max_reconnect_attempts = 0;
  CHECK_OK(cmdop_local_new(host, port, NULL, &o, &c));
  CHECK_OK(cmdop_on_connect(c, on_connect_t, NULL, NULL));
  CHECK_OK(cmdop_on_disconnect(c, on_disconnect_t, NULL, NULL));
  CHECK_OK(cmdop_connect(c));
  CHECK_OK(wait_set_machine(c, "solo", 10000));
  CHECK_OK(cmdop_execute(c, "true", 0, &r));
  cmdop_exec_result_free(r);
  r = NULL;
  CHECK(events_get(&ev, &ev.connects) == 1);
  {
    int count, blocking;
    CHECK(signal(SIGPIPE, SIG_DFL) != SIG_ERR);
    runtime_threads(&count, &blocking);
    printf("runtime threads: %d, with SIGPIPE blocked: %d\n", count, blocking);
    CHECK(count >= 1);
    CHECK(blocking == count);
  }

  /* 1. Killed and back within about a second, no call running. */
  arm();
  killed = now_ms();
  CHECK(server_ctl("server-kill") == 0);
  sleep_ms(300);
  CHECK(server_ctl("server-start") == 0);
  started = now_ms();
  printf("server back %.0f ms after the kill\n", started - killed);
  CHECK(started - killed < 1500);
  CHECK(events_wait(&ev, &ev.connects, 2, 10000) >= 2);
  CHECK(events_get(&ev, &ev.disconnects) >= 1);
  pthread_mutex_lock(&ev.mu);
  CHECK(ev.first_will_reconnect == 1);
  printf("disconnect reason: %s\n", ev.first_reason);
  pthread_mutex_unlock(&ev.mu);
  pthread_mutex_lock(&tm.mu);
  CHECK(tm.disconnect_ms > 0 && tm.reconnect_ms >= tm.disconnect_ms);
  printf("drop reported %.1f ms after the kill; on_connect %.0f ms after the server was back\n",
         tm.disconnect_ms - killed, tm.reconnect_ms - started);
  CHECK(tm.disconnect_ms - killed < 1000);
  pthread_mutex_unlock(&tm.mu);
  CHECK(cmdop_is_connected(c));
  CHECK(wait_agent(c, 45000));

  /* 2. Killed during an execute: UNAVAILABLE, soon. */
  {
    struct call k = {0};
    pthread_t th;
    k.c = c;
    k.command = "sleep 8";
    connects = events_get(&ev, &ev.connects);
    CHECK(pthread_create(&th, NULL, run_execute, &k) == 0);
    sleep_ms(1500);
    killed = now_ms();
    CHECK(server_ctl("server-kill") == 0);
    CHECK(pthread_join(th, NULL) == 0);
    printf("execute during the kill: %s after %.0f ms: %s\n", cmdop_status_str((int)k.status),
           k.done_ms - killed, k.message);
    CHECK_STATUS(k.status, CMDOP_STATUS_UNAVAILABLE);
    CHECK(k.done_ms - killed < 3000);
    CHECK(server_ctl("server-start") == 0);
    CHECK(events_wait(&ev, &ev.connects, connects + 1, 10000) >= connects + 1);
    CHECK(wait_agent(c, 45000));
  }

  /* 3. Killed during a large write: UNAVAILABLE. */
  {
    struct call k = {0};
    pthread_t th;
    k.c = c;
    k.len = (size_t)256 << 20;
    k.data = calloc(k.len, 1);
    CHECK(k.data != NULL);
    CHECK(pthread_create(&th, NULL, run_write, &k) == 0);
    sleep_ms(150);
    killed = now_ms();
    CHECK(server_ctl("server-kill") == 0);
    CHECK(pthread_join(th, NULL) == 0);
    printf("write during the kill: %s after %.0f ms: %s\n", cmdop_status_str((int)k.status),
           k.done_ms - killed, k.message);
    CHECK_STATUS(k.status, CMDOP_STATUS_UNAVAILABLE);
    free(k.data);
    CHECK(server_ctl("server-start") == 0);
  }

  cmdop_client_free(c);
  pthread_mutex_destroy(&tm.mu);
  return check_report();
}
