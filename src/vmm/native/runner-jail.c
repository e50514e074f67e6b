/*
 * runner-jail: QEMU's jail, like Firecracker's jailer (docs/qemu.md, "QEMU's jail").
 *
 *   runner-jail --root DIR --uid N --gid N [--netns PATH] [--ro PATH]... [--rw PATH]...
 *               [--dev PATH]... [--cgroup PROCS_FILE]... [--keep-fd N]... [--status-fd N]
 *               [--hostname NAME] [--env NAME=VALUE]... -- /ABSOLUTE/QEMU [ARG]...
 *
 * Run as root by the host. The parent (in the host's PID namespace):
 *   1. sets PR_SET_PDEATHSIG SIGKILL (the service dies: the jail dies);
 *   2. joins the network namespace at --netns, or creates one (only `lo`, down), and creates
 *      new mount, PID, IPC and UTS namespaces;
 *   3. forks; then drops to the uid (no capabilities, no_new_privs), forwards SIGTERM, SIGINT
 *      and SIGHUP to the child, and exits with its status (128 + signal when signalled).
 * The child, PID 1 of the new PID namespace (QEMU, once it execs: when it dies, so does
 * anything else in the namespace):
 *   4. joins each --cgroup (writes 0, "the writer", to the cgroup.procs file);
 *   5. makes every mount private, mounts a tmpfs on DIR, and bind-mounts each --ro (read-only),
 *      --rw and --dev path into it at the SAME absolute path, so QEMU's arguments do not change;
 *      remounts the tmpfs read-only, pivots into it and detaches the old root;
 *   6. drops to the uid/gid with no supplementary groups, clears every capability (bounding,
 *      ambient, inheritable, permitted, effective), sets no_new_privs and PDEATHSIG (after the
 *      uid change, which clears it), closes every fd but 0, 1, 2, the --keep-fd ones and the
 *      status fd (close-on-exec), and execs QEMU with only the --env pairs as its environment.
 * Any failure before the exec exits 125 (JAIL_FAILED) with "PART: what: why" on stderr and on
 * the status fd; nothing is written there when QEMU started, so QEMU's own exit codes are never
 * taken for the jail's. PART is one of: args, netns, namespaces, fork, cgroup, mounts, pivot,
 * user, capabilities, fds, exec.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define FAIL 125
#define MAX_PATHS 1024
#define MAX_FDS 64
#define MAX_ENV 64

static int status_fd = -1;

static void fail(const char *part, const char *what, int err) {
  char text[2048];
  if (err != 0)
    snprintf(text, sizeof text, "%s: %s: %s\n", part, what, strerror(err));
  else
    snprintf(text, sizeof text, "%s: %s\n", part, what);
  fprintf(stderr, "runner-jail: %s", text);
  if (status_fd >= 0) {
    ssize_t ignored = write(status_fd, text, strlen(text));
    (void)ignored;
  }
  _exit(FAIL);
}

struct spec {
  const char *root;
  const char *netns;
  const char *hostname;
  long uid, gid;
  const char *ro[MAX_PATHS];
  int n_ro;
  const char *rw[MAX_PATHS];
  int n_rw;
  const char *dev[MAX_PATHS];
  int n_dev;
  const char *cgroup[16];
  int n_cgroup;
  int keep[MAX_FDS];
  int n_keep;
  char *env[MAX_ENV + 1];
  int n_env;
  char **argv;
};

static long number(const char *flag, const char *v) {
  char *end;
  errno = 0;
  long n = strtol(v, &end, 10);
  if (errno != 0 || *end != '\0' || end == v || n < 0) fail("args", flag, EINVAL);
  return n;
}

static void parse(int argc, char **argv, struct spec *s) {
  memset(s, 0, sizeof *s);
  s->uid = s->gid = -1;
  s->hostname = "runner-vm";
  int i = 1;
  for (; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--") == 0) {
      i++;
      break;
    }
    if (i + 1 >= argc) fail("args", a, EINVAL);
    const char *v = argv[++i];
    if (strcmp(a, "--root") == 0) s->root = v;
    else if (strcmp(a, "--netns") == 0) s->netns = v;
    else if (strcmp(a, "--hostname") == 0) s->hostname = v;
    else if (strcmp(a, "--uid") == 0) s->uid = number(a, v);
    else if (strcmp(a, "--gid") == 0) s->gid = number(a, v);
    else if (strcmp(a, "--ro") == 0 && s->n_ro < MAX_PATHS) s->ro[s->n_ro++] = v;
    else if (strcmp(a, "--rw") == 0 && s->n_rw < MAX_PATHS) s->rw[s->n_rw++] = v;
    else if (strcmp(a, "--dev") == 0 && s->n_dev < MAX_PATHS) s->dev[s->n_dev++] = v;
    else if (strcmp(a, "--cgroup") == 0 && s->n_cgroup < 16) s->cgroup[s->n_cgroup++] = v;
    else if (strcmp(a, "--env") == 0 && s->n_env < MAX_ENV) s->env[s->n_env++] = (char *)v;
    else if (strcmp(a, "--keep-fd") == 0 && s->n_keep < MAX_FDS) {
      long fd = number(a, v);
      if (fd < 3 || fd > 65535) fail("args", "--keep-fd wants a number from 3", 0);
      s->keep[s->n_keep++] = (int)fd;
    } else if (strcmp(a, "--status-fd") == 0) {
      long fd = number(a, v);
      if (fd < 3 || fd > 65535) fail("args", "--status-fd wants a number from 3", 0);
      status_fd = (int)fd;
      if (fcntl(status_fd, F_SETFD, FD_CLOEXEC) != 0) fail("args", "--status-fd", errno);
    } else
      fail("args", a, EINVAL);
  }
  if (i >= argc) fail("args", "no QEMU command after --", 0);
  s->argv = &argv[i];
  if (s->argv[0][0] != '/') fail("args", "the QEMU binary must be an absolute path", 0);
  if (s->root == NULL || s->root[0] != '/') fail("args", "--root wants an absolute path", 0);
  if (s->uid <= 0 || s->gid <= 0)
    fail("args", "--uid and --gid must name an unprivileged user (not 0)", 0);
  for (int k = 0; k < s->n_ro + s->n_rw + s->n_dev; k++) {
    const char *p = k < s->n_ro ? s->ro[k] : k < s->n_ro + s->n_rw ? s->rw[k - s->n_ro]
                                                                   : s->dev[k - s->n_ro - s->n_rw];
    if (p[0] != '/' || strstr(p, "/../") != NULL || strlen(p) > 3000)
      fail("args", "bind paths must be absolute, without ..", 0);
  }
  s->env[s->n_env] = NULL;
}

/* mkdir -p of `path` (absolute), each new component 0755. */
static void make_dirs(const char *path) {
  char buf[4096];
  snprintf(buf, sizeof buf, "%s", path);
  for (char *p = buf + 1; *p; p++) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(buf, 0755) != 0 && errno != EEXIST) fail("mounts", buf, errno);
    *p = '/';
  }
  if (mkdir(buf, 0755) != 0 && errno != EEXIST) fail("mounts", buf, errno);
}

/* Bind-mounts `path` at root+path, then remounts it with `flags` (MS_RDONLY, MS_NOEXEC...). */
static void bind(const char *root, const char *path, unsigned long flags) {
  struct stat st;
  if (stat(path, &st) != 0) fail("mounts", path, errno);
  char target[4096];
  snprintf(target, sizeof target, "%s%s", root, path);
  if (S_ISDIR(st.st_mode)) {
    make_dirs(target);
  } else {
    char parent[4096];
    snprintf(parent, sizeof parent, "%s", target);
    char *slash = strrchr(parent, '/');
    *slash = '\0';
    make_dirs(parent);
    int fd = open(target, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) fail("mounts", target, errno);
    close(fd);
  }
  if (mount(path, target, NULL, MS_BIND, NULL) != 0) fail("mounts", path, errno);
  if (mount(NULL, target, NULL, MS_BIND | MS_REMOUNT | flags, NULL) != 0)
    fail("mounts", path, errno);
}

static void build_root(const struct spec *s) {
  if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) != 0)
    fail("mounts", "making mounts private", errno);
  if (mount("tmpfs", s->root, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=1m") != 0)
    fail("mounts", s->root, errno);
  for (int i = 0; i < s->n_ro; i++) bind(s->root, s->ro[i], MS_RDONLY | MS_NOSUID | MS_NODEV);
  for (int i = 0; i < s->n_rw; i++) bind(s->root, s->rw[i], MS_NOSUID | MS_NODEV | MS_NOEXEC);
  for (int i = 0; i < s->n_dev; i++) bind(s->root, s->dev[i], MS_NOSUID | MS_NOEXEC);
  if (chdir(s->root) != 0) fail("pivot", s->root, errno);
  /* pivot_root(".", ".") stacks the old root on the new one; detaching "." then drops it. */
  if (syscall(SYS_pivot_root, ".", ".") != 0) fail("pivot", "pivot_root", errno);
  if (umount2(".", MNT_DETACH) != 0) fail("pivot", "detaching the old root", errno);
  if (chdir("/") != 0) fail("pivot", "chdir /", errno);
  if (mount(NULL, "/", NULL, MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV, NULL) != 0)
    fail("pivot", "making the jail root read-only", errno);
}

static void join_cgroups(const struct spec *s) {
  for (int i = 0; i < s->n_cgroup; i++) {
    int fd = open(s->cgroup[i], O_WRONLY | O_CLOEXEC);
    if (fd < 0) fail("cgroup", s->cgroup[i], errno);
    if (write(fd, "0", 1) != 1) fail("cgroup", s->cgroup[i], errno);
    close(fd);
  }
}

/* Everything of root goes: groups, gid, uid, then every capability set; no_new_privs. */
static void drop_privileges(long uid, long gid) {
  for (int cap = 0; cap <= 63; cap++) {
    if (prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) != 0) {
      if (errno == EINVAL) break; /* past the kernel's last capability */
      fail("capabilities", "dropping the bounding set", errno);
    }
  }
  if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) != 0)
    fail("capabilities", "clearing the ambient set", errno);
  if (setgroups(0, NULL) != 0) fail("user", "setgroups", errno);
  if (setresgid((gid_t)gid, (gid_t)gid, (gid_t)gid) != 0) fail("user", "setresgid", errno);
  if (setresuid((uid_t)uid, (uid_t)uid, (uid_t)uid) != 0) fail("user", "setresuid", errno);
  struct __user_cap_header_struct header = {_LINUX_CAPABILITY_VERSION_3, 0};
  struct __user_cap_data_struct data[2];
  memset(data, 0, sizeof data);
  if (syscall(SYS_capset, &header, data) != 0) fail("capabilities", "capset", errno);
  if (syscall(SYS_capget, &header, data) != 0) fail("capabilities", "capget", errno);
  for (int i = 0; i < 2; i++)
    if (data[i].effective || data[i].permitted || data[i].inheritable)
      fail("capabilities", "capabilities left after the drop", 0);
  if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) fail("capabilities", "no_new_privs", errno);
}

static int cmp_int(const void *a, const void *b) {
  return *(const int *)a - *(const int *)b;
}

/* Closes every fd from 3 except `keep` (which lose close-on-exec). */
static void close_fds(int *keep, int n) {
  qsort(keep, (size_t)n, sizeof *keep, cmp_int);
  unsigned int from = 3;
  for (int i = 0; i <= n; i++) {
    unsigned int to = i < n ? (unsigned int)keep[i] : ~0U;
    if (to > from && syscall(SYS_close_range, from, to - 1, 0) != 0)
      fail("fds", "close_range", errno);
    if (i < n) {
      if (keep[i] != status_fd && fcntl(keep[i], F_SETFD, 0) != 0) fail("fds", "--keep-fd", errno);
      from = (unsigned int)keep[i] + 1;
    }
  }
}

static pid_t child_pid = 0;

static void forward(int sig) {
  if (child_pid > 0) kill(child_pid, sig);
}

static void set_pdeathsig(void) {
  if (prctl(PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0) != 0) fail("namespaces", "PR_SET_PDEATHSIG", errno);
}

int main(int argc, char **argv) {
  pid_t host_parent = getppid();
  set_pdeathsig();
  if (getppid() != host_parent) _exit(FAIL); /* the service died before PDEATHSIG was set */
  struct spec s;
  parse(argc, argv, &s);
  if (geteuid() != 0) fail("namespaces", "runner-jail must run as root", EPERM);

  int flags = CLONE_NEWNS | CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWUTS;
  if (s.netns != NULL) {
    int fd = open(s.netns, O_RDONLY | O_CLOEXEC);
    if (fd < 0) fail("netns", s.netns, errno);
    if (setns(fd, CLONE_NEWNET) != 0) fail("netns", s.netns, errno);
    close(fd);
  } else {
    flags |= CLONE_NEWNET;
  }
  if (unshare(flags) != 0) fail("namespaces", "unshare", errno);

  /* The child sees the parent die by this pipe too: PDEATHSIG is set only after its uid change. */
  int alive[2];
  if (pipe2(alive, O_CLOEXEC) != 0) fail("fork", "pipe", errno);
  sigset_t all, old;
  sigfillset(&all);
  sigprocmask(SIG_BLOCK, &all, &old);
  child_pid = fork();
  if (child_pid < 0) fail("fork", "fork", errno);

  if (child_pid == 0) {
    sigprocmask(SIG_SETMASK, &old, NULL);
    close(alive[1]);
    join_cgroups(&s);
    if (sethostname(s.hostname, strlen(s.hostname)) != 0) fail("namespaces", "sethostname", errno);
    build_root(&s);
    drop_privileges(s.uid, s.gid);
    set_pdeathsig();
    struct pollfd p = {alive[0], POLLIN, 0};
    if (poll(&p, 1, 0) != 0) _exit(FAIL); /* the parent is gone already */
    int keep[MAX_FDS + 1];
    int n = 0;
    for (int i = 0; i < s.n_keep; i++) keep[n++] = s.keep[i];
    if (status_fd >= 0) keep[n++] = status_fd;
    close_fds(keep, n);
    execve(s.argv[0], s.argv, s.env);
    fail("exec", s.argv[0], errno);
  }

  /* The parent: nothing of the VM's, no root, only the wait. */
  if (status_fd >= 0) close(status_fd);
  status_fd = -1;
  close(alive[0]);
  int keep[1] = {alive[1]};
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = forward;
  sigaction(SIGTERM, &sa, NULL);
  sigaction(SIGINT, &sa, NULL);
  sigaction(SIGHUP, &sa, NULL);
  close_fds(keep, 1);
  drop_privileges(s.uid, s.gid);
  set_pdeathsig();
  if (getppid() != host_parent) {
    kill(child_pid, SIGKILL);
    _exit(FAIL);
  }
  sigprocmask(SIG_SETMASK, &old, NULL);
  int status;
  for (;;) {
    pid_t r = waitpid(child_pid, &status, 0);
    if (r == child_pid) break;
    if (r < 0 && errno != EINTR) _exit(FAIL);
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return FAIL;
}
