/*
 * Event recorder shared by the events and reconnect tests: counts
 * on_connect / on_disconnect / on_error calls and keeps the last reason and
 * error, thread-safely (callbacks run on a library thread).
 */
#ifndef CMDOP_TEST_EVENTS_H
#define CMDOP_TEST_EVENTS_H

#include "check.h"

#include <pthread.h>

struct events {
  pthread_mutex_t mu;
  int connects, disconnects, errors;
  /* will_reconnect of the first and the last on_disconnect (-1: none yet). */
  int first_will_reconnect, last_will_reconnect;
  char first_reason[512], last_reason[512], last_error[512];
  cmdop_status last_error_status;
};

static inline void events_init(struct events *e) {
  memset(e, 0, sizeof *e);
  e->first_will_reconnect = e->last_will_reconnect = -1;
  pthread_mutex_init(&e->mu, NULL);
}

static inline void events_on_connect(void *ud) {
  struct events *e = ud;
  pthread_mutex_lock(&e->mu);
  e->connects++;
  pthread_mutex_unlock(&e->mu);
}

static inline void events_on_disconnect(void *ud, const char *reason, bool will_reconnect) {
  struct events *e = ud;
  pthread_mutex_lock(&e->mu);
  if (e->disconnects++ == 0) {
    snprintf(e->first_reason, sizeof e->first_reason, "%s", reason ? reason : "");
    e->first_will_reconnect = will_reconnect;
  }
  snprintf(e->last_reason, sizeof e->last_reason, "%s", reason ? reason : "");
  e->last_will_reconnect = will_reconnect;
  pthread_mutex_unlock(&e->mu);
}

static inline void events_on_error(void *ud, cmdop_status status, const char *message) {
  struct events *e = ud;
  pthread_mutex_lock(&e->mu);
  e->errors++;
  e->last_error_status = status;
  snprintf(e->last_error, sizeof e->last_error, "%s", message ? message : "");
  pthread_mutex_unlock(&e->mu);
}

static inline void events_install(cmdop_client *c, struct events *e) {
  CHECK_OK(cmdop_on_connect(c, events_on_connect, e, NULL));
  CHECK_OK(cmdop_on_disconnect(c, events_on_disconnect, e, NULL));
  CHECK_OK(cmdop_on_error(c, events_on_error, e, NULL));
}

/* Read a counter under the lock. */
static inline int events_get(struct events *e, const int *field) {
  int v;
  pthread_mutex_lock(&e->mu);
  v = *field;
  pthread_mutex_unlock(&e->mu);
  return v;
}

/* Wait up to `ms` until *field >= want; returns the final value. */
static inline int events_wait(struct events *e, const int *field, int want, long ms) {
  double end = now_ms() + (double)ms;
  while (events_get(e, field) < want && now_ms() < end) sleep_ms(20);
  return events_get(e, field);
}

/* Stop or start the test's control plane through tests/c/stack_ctl.sh. */
static inline int server_ctl(const char *verb) {
  char cmd[1024];
  snprintf(cmd, sizeof cmd, "'%s' %s '%s'", env_required("CMDOP_TEST_CTL"), verb,
           env_required("CMDOP_TEST_SERVER_DIR"));
  return system(cmd);
}

#endif /* CMDOP_TEST_EVENTS_H */
