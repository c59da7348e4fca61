/* Shared helpers for the benchmark programs: monotonic time, per-thread
 * sample buffers, peak-RSS probes and the one-line JSON record every program
 * prints. Header-only so each program stays a single translation unit.
 *
 * Record format (one line on stdout, read by bench/report.py):
 *   {"case":"latency","subject":"ssh-cm","label":"…","runs":N,"concurrency":C,
 *    "wall_s":…,"ops_per_s":…,"errors":E,"bytes":B,"samples_us":[…],
 *    "rss_kb":{"client":…,"controlplane":…}, "note":"…"}
 * plus, for some modes, members of their own (e.g. "rss_sampled_kb" of the
 * slow reader).
 */
#ifndef CMDOP_BENCH_COMMON_H
#define CMDOP_BENCH_COMMON_H

#define _GNU_SOURCE 1

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Cap on the processes whose peak RSS one record reports. */
#define BENCH_MAX_WATCHED 8

/* ------------------------------------------------------------------ time */

static inline uint64_t bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* --------------------------------------------------------------- failure */

static inline void bench_die(const char *fmt, ...) __attribute__((noreturn, format(printf, 1, 2)));
static inline void bench_die(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("bench: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(2);
}

/* Parses a non-negative integer with an optional K/M/G (binary) suffix. */
static inline uint64_t bench_parse_size(const char *what, const char *s) {
  char *end = NULL;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || end == s || s[0] == '-')
    bench_die("%s: '%s' is not a non-negative number", what, s);
  uint64_t mult = 1;
  switch (*end) {
    case '\0': break;
    case 'K': case 'k': mult = 1ull << 10; end++; break;
    case 'M': case 'm': mult = 1ull << 20; end++; break;
    case 'G': case 'g': mult = 1ull << 30; end++; break;
    default: end = (char *)"?"; break;
  }
  if (*end != '\0') bench_die("%s: '%s' has an unknown suffix (use K, M or G)", what, s);
  if (v > UINT64_MAX / mult) bench_die("%s: '%s' is too large", what, s);
  return (uint64_t)v * mult;
}

/* --------------------------------------------------------------- samples */

/* A growable array of latencies in microseconds, owned by one thread. */
typedef struct {
  double *us;
  size_t len;
  size_t cap;
} bench_samples;

static inline void bench_samples_push(bench_samples *s, double us) {
  if (s->len == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 256;
    double *p = realloc(s->us, cap * sizeof *p);
    if (!p) bench_die("out of memory while recording %zu samples", s->len);
    s->us = p;
    s->cap = cap;
  }
  s->us[s->len++] = us;
}

/* Appends all of `from` to `into` and empties `from`. */
static inline void bench_samples_move(bench_samples *into, bench_samples *from) {
  for (size_t i = 0; i < from->len; i++) bench_samples_push(into, from->us[i]);
  free(from->us);
  from->us = NULL;
  from->len = from->cap = 0;
}

/* ------------------------------------------------------------ peak RSS */

/* Processes whose peak RSS (VmHWM) a record reports, given as --watch NAME=PID. */
typedef struct {
  char name[32];
  long pid;
} bench_watched;

typedef struct {
  bench_watched items[BENCH_MAX_WATCHED];
  size_t len;
} bench_watch_list;

static inline void bench_watch_add(bench_watch_list *w, const char *spec) {
  const char *eq = strchr(spec, '=');
  if (!eq || eq == spec || (size_t)(eq - spec) >= sizeof w->items[0].name)
    bench_die("--watch wants NAME=PID (NAME up to 31 bytes), got '%s'", spec);
  if (w->len == BENCH_MAX_WATCHED) bench_die("at most %d --watch options", BENCH_MAX_WATCHED);
  bench_watched *it = &w->items[w->len++];
  memcpy(it->name, spec, (size_t)(eq - spec));
  it->name[eq - spec] = '\0';
  it->pid = (long)bench_parse_size("--watch PID", eq + 1);
}

/* Reads the "<field>:" line (a size in KiB, e.g. "VmHWM") of /proc/<pid>/status
 * (pid 0 = this process); -1 if unknown. */
static inline long bench_status_kb(long pid, const char *field) {
  char path[64];
  if (pid == 0)
    snprintf(path, sizeof path, "/proc/self/status");
  else
    snprintf(path, sizeof path, "/proc/%ld/status", pid);
  FILE *f = fopen(path, "r");
  if (!f) return -1;
  char line[256];
  size_t len = strlen(field);
  long kb = -1;
  while (fgets(line, sizeof line, f)) {
    if (strncmp(line, field, len) == 0 && line[len] == ':') {
      kb = strtol(line + len + 1, NULL, 10);
      break;
    }
  }
  fclose(f);
  return kb;
}

/* Reads VmHWM (peak resident set, KiB) of `pid` (0 = this process); -1 if unknown. */
static inline long bench_vm_hwm_kb(long pid) { return bench_status_kb(pid, "VmHWM"); }

/* Reads VmRSS (current resident set, KiB) of `pid` (0 = this process); -1 if unknown. */
static inline long bench_vm_rss_kb(long pid) { return bench_status_kb(pid, "VmRSS"); }

/* Resets the peak-RSS counter of every watched process (Linux clear_refs "5"),
 * so the figure afterwards belongs to this case alone. Best effort: without
 * permission the figure is the process's lifetime peak, which the report says. */
static inline void bench_watch_reset(const bench_watch_list *w) {
  for (size_t i = 0; i < w->len; i++) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%ld/clear_refs", w->items[i].pid);
    FILE *f = fopen(path, "w");
    if (!f) continue;
    fputs("5", f);
    fclose(f);
  }
}

/* ------------------------------------------------------------ JSON record */

/* Writes `s` as a JSON string literal. */
static inline void bench_json_str(FILE *out, const char *s) {
  fputc('"', out);
  for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
    if (*p == '"' || *p == '\\')
      fprintf(out, "\\%c", *p);
    else if (*p < 0x20)
      fprintf(out, "\\u%04x", *p);
    else
      fputc(*p, out);
  }
  fputc('"', out);
}

/* What every record carries; programs fill what they measured. */
typedef struct {
  const char *case_name; /* latency, throughput, stream, files, coldstart */
  const char *subject;   /* short id of what was measured, e.g. c-native */
  const char *label;     /* human text for the report */
  const char *note;      /* optional remark, may be NULL */
  unsigned runs;
  unsigned concurrency;
  double wall_s;
  unsigned errors;
  uint64_t bytes; /* payload bytes per run (stream/files), 0 otherwise */
  long client_rss_kb;
  const bench_samples *samples;
  const bench_watch_list *watch;
  /* Optional extra members, already JSON ("\"key\":value,…"); NULL = none. */
  const char *extra_json;
} bench_record;

static inline void bench_record_print(const bench_record *r) {
  FILE *out = stdout;
  fputs("{\"case\":", out);
  bench_json_str(out, r->case_name);
  fputs(",\"subject\":", out);
  bench_json_str(out, r->subject);
  fputs(",\"label\":", out);
  bench_json_str(out, r->label ? r->label : r->subject);
  if (r->note) {
    fputs(",\"note\":", out);
    bench_json_str(out, r->note);
  }
  double ops = r->wall_s > 0 ? (double)(r->runs - r->errors) / r->wall_s : 0.0;
  fprintf(out, ",\"runs\":%u,\"concurrency\":%u,\"wall_s\":%.6f,\"ops_per_s\":%.3f,\"errors\":%u",
          r->runs, r->concurrency, r->wall_s, ops, r->errors);
  fprintf(out, ",\"bytes\":%" PRIu64, r->bytes);
  fputs(",\"rss_kb\":{", out);
  fprintf(out, "\"client\":%ld", r->client_rss_kb);
  if (r->watch) {
    for (size_t i = 0; i < r->watch->len; i++) {
      fputc(',', out);
      bench_json_str(out, r->watch->items[i].name);
      fprintf(out, ":%ld", bench_vm_hwm_kb(r->watch->items[i].pid));
    }
  }
  fputc('}', out);
  if (r->extra_json && *r->extra_json) fprintf(out, ",%s", r->extra_json);
  fputs(",\"samples_us\":[", out);
  if (r->samples) {
    for (size_t i = 0; i < r->samples->len; i++)
      fprintf(out, "%s%.3f", i ? "," : "", r->samples->us[i]);
  }
  fputs("]}\n", out);
  fflush(out);
}

#endif /* CMDOP_BENCH_COMMON_H */
