/*
 * Files: listing (types, sizes, modes, mtimes, hidden files, paging),
 * reading and writing (binary bytes, empty and larger files, files over
 * the 32 MiB message limit through streaming transfers), and errors.
 * The agent of `cmdop dev` runs on this machine, so the test prepares and
 * checks the files locally.
 */
#include "check.h"

#include <sys/stat.h>
#include <sys/types.h>
#include <utime.h>

static char dir[] = "/tmp/cmdop-ctest-files-XXXXXX";

static void write_local(const char *name, const char *content) {
  char path[512];
  FILE *f;
  snprintf(path, sizeof path, "%s/%s", dir, name);
  f = fopen(path, "w");
  if (f == NULL) { perror(path); exit(1); }
  fputs(content, f);
  fclose(f);
}

static const cmdop_file_entry *find(const cmdop_file_list *l, const char *name) {
  size_t i;
  for (i = 0; i < cmdop_file_list_count(l); i++) {
    const cmdop_file_entry *e = cmdop_file_list_get(l, i);
    if (strcmp(cmdop_file_entry_name(e), name) == 0) return e;
  }
  return NULL;
}

static void listing(cmdop_client *c) {
  char path[512];
  struct utimbuf times = {1700000000, 1700000000};
  cmdop_file_list *l = NULL;
  const cmdop_file_entry *e;

  write_local("a.txt", "hello");
  snprintf(path, sizeof path, "%s/a.txt", dir);
  chmod(path, 0640);
  utime(path, &times);
  write_local(".hidden", "h");
  snprintf(path, sizeof path, "%s/sub", dir);
  mkdir(path, 0750);
  snprintf(path, sizeof path, "%s/link", dir);
  CHECK(symlink("a.txt", path) == 0);

  CHECK_OK(cmdop_list_files(c, dir, &l));
  CHECK(l != NULL);
  CHECK(cmdop_file_list_count(l) == 3);
  CHECK(strstr(cmdop_file_list_path(l), "cmdop-ctest-files-") != NULL);
  CHECK(strcmp(cmdop_file_list_next_page_token(l), "") == 0);
  e = find(l, "a.txt");
  CHECK(e != NULL);
  if (e) {
    CHECK(cmdop_file_entry_type(e) == CMDOP_FILE_TYPE_FILE);
    CHECK(cmdop_file_entry_size(e) == 5);
    CHECK((cmdop_file_entry_mode(e) & 0777) == 0640);
    CHECK(cmdop_file_entry_mtime(e) == 1700000000);
    CHECK(strstr(cmdop_file_entry_path(e), "/a.txt") != NULL);
  }
  e = find(l, "sub");
  CHECK(e != NULL && cmdop_file_entry_type(e) == CMDOP_FILE_TYPE_DIRECTORY);
  if (e) CHECK((cmdop_file_entry_mode(e) & 0777) == 0750);
  e = find(l, "link");
  CHECK(e != NULL && cmdop_file_entry_type(e) == CMDOP_FILE_TYPE_SYMLINK);
  CHECK(find(l, ".hidden") == NULL);
  CHECK(cmdop_file_list_get(l, 3) == NULL);
  CHECK(cmdop_file_list_get(l, (size_t)-1) == NULL);
  cmdop_file_list_free(l);
  l = NULL;

  CHECK_OK(cmdop_list_files_page(c, dir, NULL, true, &l));
  CHECK(cmdop_file_list_count(l) == 4);
  e = find(l, ".hidden");
  CHECK(e != NULL && cmdop_file_entry_size(e) == 1);
  cmdop_file_list_free(l);
}

static void paging(cmdop_client *c) {
  char path[600], name[64];
  cmdop_file_list *l = NULL;
  const char *token = "";
  char *next = NULL;
  size_t total = 0, pages = 0, i;
  int seen[250];

  snprintf(path, sizeof path, "%s/many", dir);
  mkdir(path, 0755);
  for (i = 0; i < 250; i++) {
    snprintf(name, sizeof name, "many/f%03zu", i);
    write_local(name, "x");
  }
  memset(seen, 0, sizeof seen);
  do {
    l = NULL;
    CHECK_OK(cmdop_list_files_page(c, path, token, false, &l));
    if (l == NULL) break;
    pages++;
    CHECK(cmdop_file_list_count(l) <= 100);
    for (i = 0; i < cmdop_file_list_count(l); i++) {
      int n = -1;
      if (sscanf(cmdop_file_entry_name(cmdop_file_list_get(l, i)), "f%d", &n) == 1 && n >= 0 && n < 250)
        seen[n]++;
    }
    total += cmdop_file_list_count(l);
    free(next);
    next = strdup(cmdop_file_list_next_page_token(l));
    token = next;
    cmdop_file_list_free(l);
  } while (next && next[0] != '\0' && pages < 10);
  free(next);
  CHECK(pages == 3);
  CHECK(total == 250);
  for (i = 0; i < 250; i++)
    if (seen[i] != 1) { CHECK(seen[i] == 1); break; }
}

static void read_write(cmdop_client *c) {
  char path[512];
  uint8_t all[256], *big;
  size_t i, big_len = 3u * 1024 * 1024 + 17;
  cmdop_bytes *b = NULL;
  FILE *f;

  for (i = 0; i < sizeof all; i++) all[i] = (uint8_t)(255 - i);
  snprintf(path, sizeof path, "%s/bin.dat", dir);
  CHECK_OK(cmdop_write_file(c, path, all, sizeof all));
  CHECK_OK(cmdop_read_file(c, path, &b));
  CHECK_BYTES(cmdop_bytes_data(b), cmdop_bytes_len(b), all, sizeof all);
  cmdop_bytes_free(b);
  b = NULL;
  /* What landed on disk is exactly that. */
  f = fopen(path, "rb");
  CHECK(f != NULL);
  if (f) {
    uint8_t disk[512];
    size_t n = fread(disk, 1, sizeof disk, f);
    fclose(f);
    CHECK_BYTES(disk, n, all, sizeof all);
  }

  /* Replace with something shorter. */
  CHECK_OK(cmdop_write_file(c, path, (const uint8_t *)"short", 5));
  CHECK_OK(cmdop_read_file(c, path, &b));
  CHECK_BYTES(cmdop_bytes_data(b), cmdop_bytes_len(b), "short", 5);
  cmdop_bytes_free(b);
  b = NULL;

  /* Empty file, NULL data allowed with length 0. */
  CHECK_OK(cmdop_write_file(c, path, NULL, 0));
  CHECK_OK(cmdop_read_file(c, path, &b));
  CHECK(b != NULL && cmdop_bytes_len(b) == 0);
  cmdop_bytes_free(b);
  b = NULL;

  /* A few MiB round trip. */
  big = malloc(big_len);
  CHECK(big != NULL);
  if (big) {
    for (i = 0; i < big_len; i++) big[i] = (uint8_t)((i * 2654435761u) >> 13);
    snprintf(path, sizeof path, "%s/big.dat", dir);
    CHECK_OK(cmdop_write_file(c, path, big, big_len));
    CHECK_OK(cmdop_read_file(c, path, &b));
    CHECK(cmdop_bytes_len(b) == big_len);
    CHECK(cmdop_bytes_len(b) == big_len && memcmp(cmdop_bytes_data(b), big, big_len) == 0);
    cmdop_bytes_free(b);
    b = NULL;
    free(big);
  }

  /* A file written locally reads back through the agent. */
  write_local("local.txt", "from the test\n");
  snprintf(path, sizeof path, "%s/local.txt", dir);
  CHECK_OK(cmdop_read_file(c, path, &b));
  CHECK_BYTES(cmdop_bytes_data(b), cmdop_bytes_len(b), "from the test\n", 14);
  cmdop_bytes_free(b);
}

/* Beyond one message: the native stack offers streaming transfers
 * ("files.v1"), so a file over the 32 MiB message limit goes up and comes
 * back in 1 MiB chunks, byte for byte, and no temp file is left behind. */
static void beyond_one_message(cmdop_client *c) {
  char path[512], cmd[700];
  size_t i, len = 40u * 1024 * 1024 + 3;
  uint8_t *data = malloc(len);
  cmdop_bytes *b = NULL;
  struct stat st;

  CHECK(data != NULL);
  if (data == NULL) return;
  for (i = 0; i < len; i++) data[i] = (uint8_t)((i * 2246822519u) >> 11);
  snprintf(path, sizeof path, "%s/over-32-mib.dat", dir);
  CHECK_OK(cmdop_write_file(c, path, data, len));
  CHECK(stat(path, &st) == 0 && (size_t)st.st_size == len);
  CHECK_OK(cmdop_read_file(c, path, &b));
  CHECK(b != NULL && cmdop_bytes_len(b) == len);
  CHECK(b != NULL && cmdop_bytes_len(b) == len && memcmp(cmdop_bytes_data(b), data, len) == 0);
  cmdop_bytes_free(b);
  free(data);
  snprintf(cmd, sizeof cmd, "ls -a '%s' | grep -q cmdop-tmp", dir);
  CHECK(system(cmd) != 0);
}

static void errors(cmdop_client *c) {
  char path[512];
  cmdop_bytes *b = (cmdop_bytes *)dir;
  cmdop_file_list *l = (cmdop_file_list *)dir;

  snprintf(path, sizeof path, "%s/missing.txt", dir);
  CHECK_STATUS(cmdop_read_file(c, path, &b), CMDOP_STATUS_NOT_FOUND);
  CHECK(b == NULL);
  CHECK(cmdop_last_error_message()[0] != '\0');
  snprintf(path, sizeof path, "%s/missing-dir", dir);
  CHECK_STATUS(cmdop_list_files(c, path, &l), CMDOP_STATUS_NOT_FOUND);
  CHECK(l == NULL);
  snprintf(path, sizeof path, "%s/no/such/dir/f.txt", dir);
  CHECK(cmdop_write_file(c, path, (const uint8_t *)"x", 1) != CMDOP_STATUS_OK);
  /* Reading a directory, listing a file: errors, not crashes. */
  CHECK(cmdop_read_file(c, dir, &b) != CMDOP_STATUS_OK);
  snprintf(path, sizeof path, "%s/a.txt", dir);
  CHECK(cmdop_list_files(c, path, &l) != CMDOP_STATUS_OK);
  /* A page token that no listing handed out: refused, saying so. */
  CHECK(cmdop_list_files_page(c, dir, "not-a-real-page-token", false, &l) != CMDOP_STATUS_OK);
  CHECK_ERROR_MENTIONS("page_token");
  CHECK(l == NULL);
  /* Without privileges the agent is refused (skipped as root). */
  if (geteuid() != 0) {
    CHECK_STATUS(cmdop_write_file(c, "/proc/version", (const uint8_t *)"x", 1), CMDOP_STATUS_PERMISSION_DENIED);
  }
}

int main(void) {
  cmdop_options o = test_local_options(20000);
  cmdop_client *c;
  char cmd[600];

  if (mkdtemp(dir) == NULL) { perror("mkdtemp"); return 1; }
  c = test_connect(&o);
  listing(c);
  paging(c);
  read_write(c);
  beyond_one_message(c);
  errors(c);
  cmdop_client_free(c);
  snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
  if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
  return check_report();
}
