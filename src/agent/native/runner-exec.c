/*
 * runner-exec: the one exec between the agent and a job's program.
 *
 * Under TCG every dynamically linked exec costs ~30 ms and the old chain
 * (sh -> prlimit -> setpriv -> env -> program) cost ~155 ms before the program started. This
 * static helper does all of it in one process, then execs the program:
 *
 *   runner-exec [--status-fd N] [--cgroup DIR] [--rlimit NAME=SOFT:HARD]... [--uid N --gid N]
 *               [--env NAME=VALUE]... -- PROGRAM [ARG]...
 *
 *   1. joins the stage's cgroup (writes its own pid to DIR/cgroup.procs), so the program and
 *      everything it starts is counted and confined from its first instruction;
 *   2. sets the rlimits (cpu, core, fsize, nofile, stack, nproc, data);
 *   3. drops every capability from the bounding set, clears supplementary groups, sets the gid
 *      and the uid (all of them: real, effective, saved), and sets no_new_privs;
 *   4. replaces the whole environment with the --env pairs and looks PROGRAM up in their PATH;
 *   5. execs it. Any failure before the exec exits 125 with a line on stderr saying which step,
 *      and the same text on the status fd (close-on-exec: the agent reads nothing there when the
 *      program started, so a program's own exit 125 is never taken for the sandbox's failure).
 *
 *   runner-exec --reseed UNIX_TIME_MS   (entropy bytes on stdin)
 *
 * credits the bytes to the kernel's pool (RNDADDENTROPY), forces the CRNG to reseed
 * (RNDRESEEDCRNG) and sets CLOCK_REALTIME: the reseed after a snapshot restore, in one static
 * exec instead of perl and date (~340 ms under TCG). Prints the number of bytes credited.
 *
 * Built static (gcc -static) when the rootfs is built, so it needs nothing from the image.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <linux/random.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define FAIL 125
#define MAX_ENV 4096
#define MAX_ENTROPY 4096

/* With --status-fd N: failures before the exec are written there (it closes on exec). */
static int status_fd = -1;

static void report(const char *text) {
  fprintf(stderr, "runner-exec: %s\n", text);
  if (status_fd >= 0) {
    ssize_t ignored = write(status_fd, text, strlen(text));
    (void)ignored;
  }
  _exit(FAIL);
}

static void die(const char *step, const char *what) {
  char text[512];
  snprintf(text, sizeof text, "%s%s%s: %s", step, what ? " " : "", what ? what : "",
           strerror(errno));
  report(text);
}

static void usage(const char *why) { report(why); }

static int parse_u64(const char *s, unsigned long long *out) {
  char *end;
  if (*s == '\0') return -1;
  errno = 0;
  unsigned long long v = strtoull(s, &end, 10);
  if (errno != 0 || *end != '\0') return -1;
  *out = v;
  return 0;
}

static int rlimit_resource(const char *name) {
  if (strcmp(name, "cpu") == 0) return RLIMIT_CPU;
  if (strcmp(name, "core") == 0) return RLIMIT_CORE;
  if (strcmp(name, "fsize") == 0) return RLIMIT_FSIZE;
  if (strcmp(name, "nofile") == 0) return RLIMIT_NOFILE;
  if (strcmp(name, "nproc") == 0) return RLIMIT_NPROC;
  if (strcmp(name, "data") == 0) return RLIMIT_DATA;
  if (strcmp(name, "stack") == 0) return RLIMIT_STACK;
  return -1;
}

/* NAME=SOFT:HARD */
static void set_rlimit(const char *spec) {
  char buf[128];
  if (strlen(spec) >= sizeof buf) usage("--rlimit is too long");
  strcpy(buf, spec);
  char *eq = strchr(buf, '=');
  char *colon = eq ? strchr(eq, ':') : NULL;
  if (!eq || !colon) usage("--rlimit wants NAME=SOFT:HARD");
  *eq = '\0';
  *colon = '\0';
  int resource = rlimit_resource(buf);
  unsigned long long soft, hard;
  if (resource < 0) usage("--rlimit: unknown resource");
  if (parse_u64(eq + 1, &soft) || parse_u64(colon + 1, &hard)) usage("--rlimit: bad number");
  struct rlimit rl = {.rlim_cur = soft, .rlim_max = hard};
  if (setrlimit(resource, &rl) != 0) die("setrlimit", buf);
}

static void join_cgroup(const char *dir) {
  char path[4096];
  if (snprintf(path, sizeof path, "%s/cgroup.procs", dir) >= (int)sizeof path)
    usage("--cgroup path is too long");
  int fd = open(path, O_WRONLY | O_CLOEXEC);
  if (fd < 0) die("open", path);
  char pid[32];
  int n = snprintf(pid, sizeof pid, "%d\n", (int)getpid());
  if (write(fd, pid, (size_t)n) != n) die("join cgroup", dir);
  close(fd);
}

static void drop_privileges(unsigned long long uid, unsigned long long gid) {
  /* The bounding set first: dropping it needs CAP_SETPCAP, which setuid takes away. */
  for (int cap = 0; cap <= 63; cap++) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0 && errno != EINVAL) die("drop capability", NULL);
  }
  if (setgroups(0, NULL) != 0) die("setgroups", NULL);
  if (setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0) die("setresgid", NULL);
  if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) die("setresuid", NULL);
  /* Proof: getting root back must fail. */
  if (setresuid(0, 0, 0) == 0) {
    errno = EPERM;
    die("uid 0 came back after setresuid", NULL);
  }
}

/*
 * A program that cannot be executed is the program's failure, not the sandbox's (a compile that
 * made no binary, a script without its interpreter): said on stderr, exit 127 or 126 as a shell
 * would, and nothing on the status fd.
 */
static void exec_failed(const char *program) {
  int err = errno;
  fprintf(stderr, "runner-exec: cannot execute %s: %s\n", program, strerror(err));
  _exit(err == ENOENT || err == ENOTDIR ? 127 : 126);
}

/* execvpe with the PATH of the new environment (never the agent's). */
static void exec_program(char **argv, char **envp) {
  const char *path = "/usr/bin:/bin";
  for (char **e = envp; *e; e++) {
    if (strncmp(*e, "PATH=", 5) == 0) path = *e + 5;
  }
  if (strchr(argv[0], '/')) {
    execve(argv[0], argv, envp);
    exec_failed(argv[0]);
  }
  char candidate[4096];
  int saved = ENOENT;
  const char *p = path;
  while (*p) {
    const char *colon = strchr(p, ':');
    size_t len = colon ? (size_t)(colon - p) : strlen(p);
    if (len > 0 && len + 1 + strlen(argv[0]) < sizeof candidate) {
      memcpy(candidate, p, len);
      candidate[len] = '/';
      strcpy(candidate + len + 1, argv[0]);
      execve(candidate, argv, envp);
      if (errno != ENOENT && errno != ENOTDIR) saved = errno;
    }
    if (!colon) break;
    p = colon + 1;
  }
  errno = saved;
  exec_failed(argv[0]);
}

static int reseed(const char *time_ms) {
  unsigned long long ms;
  if (parse_u64(time_ms, &ms)) usage("--reseed wants UNIX_TIME_MS");
  struct {
    struct rand_pool_info info;
    unsigned char buf[MAX_ENTROPY];
  } pool;
  size_t n = 0;
  for (;;) {
    ssize_t r = read(0, pool.buf + n, sizeof pool.buf - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) die("read entropy", NULL);
    if (r == 0) break;
    n += (size_t)r;
    if (n == sizeof pool.buf) break;
  }
  int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  if (fd < 0) die("open", "/dev/urandom");
  pool.info.entropy_count = (int)(n * 8);
  pool.info.buf_size = (int)n;
  if (ioctl(fd, RNDADDENTROPY, &pool.info) != 0) die("ioctl", "RNDADDENTROPY");
  if (ioctl(fd, RNDRESEEDCRNG) != 0) die("ioctl", "RNDRESEEDCRNG");
  close(fd);
  struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
  if (clock_settime(CLOCK_REALTIME, &ts) != 0) die("clock_settime", NULL);
  printf("%zu\n", n);
  return 0;
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--reseed") == 0) return reseed(argv[2]);
  const char *cgroup = NULL;
  unsigned long long uid = 0, gid = 0;
  int have_uid = 0, have_gid = 0;
  static char *envp[MAX_ENV + 1];
  int nenv = 0;
  int i = 1;
  /* Options are applied in a fixed order below, whatever order they came in. */
  const char *rlimits[16];
  int nrl = 0;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) {
      i++;
      break;
    }
    if (i + 1 >= argc) usage("an option lacks its value");
    const char *v = argv[++i];
    if (strcmp(a, "--status-fd") == 0) {
      unsigned long long fd;
      if (parse_u64(v, &fd) || fd < 3 || fd > 1024) usage("--status-fd wants a number from 3");
      status_fd = (int)fd;
      if (fcntl(status_fd, F_SETFD, FD_CLOEXEC) != 0) die("fcntl", "--status-fd");
    } else if (strcmp(a, "--cgroup") == 0) {
      cgroup = v;
    } else if (strcmp(a, "--rlimit") == 0) {
      if (nrl == 16) usage("too many --rlimit");
      rlimits[nrl++] = v;
    } else if (strcmp(a, "--uid") == 0) {
      if (parse_u64(v, &uid) || uid == 0) usage("--uid wants a number other than 0");
      have_uid = 1;
    } else if (strcmp(a, "--gid") == 0) {
      if (parse_u64(v, &gid) || gid == 0) usage("--gid wants a number other than 0");
      have_gid = 1;
    } else if (strcmp(a, "--env") == 0) {
      if (nenv == MAX_ENV) usage("too many --env");
      if (!strchr(v, '=')) usage("--env wants NAME=VALUE");
      envp[nenv++] = (char *)v;
    } else {
      usage("unknown option");
    }
  }
  if (i >= argc) usage("no program after --");
  if (have_uid != have_gid) usage("give --uid and --gid together");
  envp[nenv] = NULL;

  if (cgroup) join_cgroup(cgroup);
  for (int k = 0; k < nrl; k++) set_rlimit(rlimits[k]);
  if (have_uid) drop_privileges(uid, gid);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) die("no_new_privs", NULL);
  exec_program(argv + i, envp);
  return FAIL;
}
