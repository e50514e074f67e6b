/*
 * runner-exec: the one exec between the agent and a job's program.
 *
 * Under TCG every dynamically linked exec costs ~30 ms and the old chain
 * (sh -> prlimit -> setpriv -> env -> program) cost ~155 ms before the program started. This
 * static helper does all of it in one process, then execs the program:
 *
 *   runner-exec [--status-fd N] [--cgroup DIR] [--rlimit NAME=SOFT:HARD]... [--uid N --gid N]
 *               [--env NAME=VALUE]... [--seccomp FAMILY] -- PROGRAM [ARG]...
 *
 *   1. joins the stage's cgroup (writes its own pid to DIR/cgroup.procs), so the program and
 *      everything it starts is counted and confined from its first instruction;
 *   2. sets the rlimits (cpu, core, fsize, nofile, stack, nproc, data);
 *   3. drops every capability from the bounding set, clears supplementary groups, sets the gid
 *      and the uid (all of them: real, effective, saved), and sets no_new_privs;
 *   4. replaces the whole environment with the --env pairs and looks PROGRAM up in their PATH;
 *   5. with --seccomp FAMILY (default, jvm, node), installs that family's seccomp-BPF filter
 *      (see SECCOMP below), inherited by everything the program starts;
 *   6. execs it. Any failure before the exec exits 125 with a line on stderr saying which step,
 *      and the same text on the status fd (close-on-exec: the agent reads nothing there when the
 *      program started, so a program's own exit 125 is never taken for the sandbox's failure).
 *
 *   runner-exec --connect SOCKET --skip N -- PROGRAM [ARG]...
 *
 * the client of a compile server (docs/agent.md, "Compile servers"), run as the program of a
 * compile stage: sends the working directory and the arguments after the first N to the server
 * on the unix socket SOCKET, copies what it answers to stdout and stderr, and exits with the
 * status it gives. When the server cannot be reached or declines the command line, it execs
 * PROGRAM ARG... itself (the command the server stands in for); so it does when the server ends
 * before it answered anything (a compile that ended the server's process, say). A server that
 * ends after some output but without a status: exit 125 and a line on stderr.
 *
 *   runner-exec --reseed UNIX_TIME_MS   (entropy bytes on stdin)
 *
 * credits the bytes to the kernel's pool (RNDADDENTROPY), forces the CRNG to reseed
 * (RNDRESEEDCRNG) and sets CLOCK_REALTIME: the reseed after a snapshot restore, in one static
 * exec instead of perl and date (~340 ms under TCG). Prints the number of bytes credited.
 *
 *   runner-exec --reseed-server
 *
 * the same, for requests on stdin from a process the agent keeps from before the snapshot, so
 * that a reseed costs no process at all (see reseed_server below).
 *
 * Built static (gcc -static) when the rootfs is built, so it needs nothing from the image.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/audit.h>
#include <linux/capability.h>
#include <linux/filter.h>
#include <linux/random.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/syscall.h>
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

/*
 * Credits n bytes to the kernel's pool, forces the CRNG to reseed and sets CLOCK_REALTIME to
 * ms. 0 on success; otherwise -1 with the failed step in err (errno still set).
 */
static int apply_seed(unsigned long long ms, struct rand_pool_info *info, size_t n,
                      const char **err) {
  int fd = open("/dev/urandom", O_WRONLY | O_CLOEXEC);
  if (fd < 0) return *err = "open /dev/urandom", -1;
  info->entropy_count = (int)(n * 8);
  info->buf_size = (int)n;
  int failed = 0;
  if (ioctl(fd, RNDADDENTROPY, info) != 0) *err = "ioctl RNDADDENTROPY", failed = 1;
  else if (ioctl(fd, RNDRESEEDCRNG) != 0) *err = "ioctl RNDRESEEDCRNG", failed = 1;
  int saved = errno;
  close(fd);
  errno = saved;
  if (failed) return -1;
  struct timespec ts = {.tv_sec = (time_t)(ms / 1000), .tv_nsec = (long)(ms % 1000) * 1000000L};
  if (clock_settime(CLOCK_REALTIME, &ts) != 0) return *err = "clock_settime", -1;
  return 0;
}

struct seed_pool {
  struct rand_pool_info info;
  unsigned char buf[MAX_ENTROPY];
};

static int reseed(const char *time_ms) {
  unsigned long long ms;
  if (parse_u64(time_ms, &ms)) usage("--reseed wants UNIX_TIME_MS");
  static struct seed_pool pool;
  size_t n = 0;
  for (;;) {
    ssize_t r = read(0, pool.buf + n, sizeof pool.buf - n);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) die("read entropy", NULL);
    if (r == 0) break;
    n += (size_t)r;
    if (n == sizeof pool.buf) break;
  }
  const char *err;
  if (apply_seed(ms, &pool.info, n, &err) != 0) die(err, NULL);
  printf("%zu\n", n);
  return 0;
}

/*
 * SECCOMP: one filter per language family, written by hand (no libseccomp: the helper is
 * static and needs nothing from the image). docs/security.md lists what each family allows.
 *
 *   - Only the x86_64 ABI: a call through the i386 entry (int 0x80) or with the x32 bit set
 *     kills the process (SIGSYS). No toolchain here makes such calls; their numbers mean other
 *     syscalls, so an allow-list by number would be wrong for them, and a kill cannot be
 *     mistaken for an ordinary failure.
 *   - DENIED calls (the guest-kernel surface: ptrace, bpf, io_uring, keys, mounts, namespaces,
 *     modules, the obsolete ones...) fail with EPERM, so a program can say what it was refused.
 *   - clone with any CLONE_NEW* flag: EPERM; clone3: ENOSYS (its flags are in memory, which a
 *     filter cannot read; glibc falls back to clone, whose flags it can, only on ENOSYS).
 *   - personality: only the query (0xffffffff) and PER_LINUX (0); anything else EPERM.
 *   - socket/socketpair: AF_UNIX, AF_INET, AF_INET6 and AF_NETLINK only; others (AF_VSOCK to
 *     the host, AF_PACKET, AF_ALG, AF_KEY...) fail with EAFNOSUPPORT, as for a family the kernel
 *     lacks.
 *   - everything on the family's allow-list: allowed; anything else (newer calls, rare ones):
 *     ENOSYS, as if the kernel lacked it: glibc's fallbacks (faccessat2, statx, clone3,
 *     close_range...) act on ENOSYS only.
 */
#define SC_ALLOW SECCOMP_RET_ALLOW
#define SC_KILL SECCOMP_RET_KILL_PROCESS
#define SC_ERRNO(e) (SECCOMP_RET_ERRNO | ((e) & SECCOMP_RET_DATA))
#define X32_BIT 0x40000000u
#define CLONE_NEW_FLAGS                                                                     \
  (CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER |            \
   CLONE_NEWPID | CLONE_NEWNET)
#define END (-1)

/* What every family allows: ordinary file, memory, process, signal, time, IPC and socket calls. */
static const int allow_base[] = {
    SYS_read, SYS_write, SYS_open, SYS_close, SYS_stat, SYS_fstat, SYS_lstat, SYS_poll,
    SYS_lseek, SYS_mmap, SYS_mprotect, SYS_munmap, SYS_brk, SYS_rt_sigaction,
    SYS_rt_sigprocmask, SYS_rt_sigreturn, SYS_ioctl, SYS_pread64, SYS_pwrite64, SYS_readv,
    SYS_writev, SYS_access, SYS_pipe, SYS_select, SYS_sched_yield, SYS_mremap, SYS_msync,
    SYS_mincore, SYS_madvise, SYS_shmget, SYS_shmat, SYS_shmctl, SYS_dup, SYS_dup2, SYS_pause,
    SYS_nanosleep, SYS_getitimer, SYS_alarm, SYS_setitimer, SYS_getpid, SYS_sendfile,
    SYS_connect, SYS_accept, SYS_sendto, SYS_recvfrom, SYS_sendmsg, SYS_recvmsg, SYS_shutdown,
    SYS_bind, SYS_listen, SYS_getsockname, SYS_getpeername, SYS_setsockopt, SYS_getsockopt,
    SYS_fork, SYS_vfork, SYS_execve, SYS_exit, SYS_wait4, SYS_kill, SYS_uname, SYS_semget,
    SYS_semop, SYS_semctl, SYS_shmdt, SYS_msgget, SYS_msgsnd, SYS_msgrcv, SYS_msgctl, SYS_fcntl,
    SYS_flock, SYS_fsync, SYS_fdatasync, SYS_truncate, SYS_ftruncate, SYS_getdents, SYS_getcwd,
    SYS_chdir, SYS_fchdir, SYS_rename, SYS_mkdir, SYS_rmdir, SYS_creat, SYS_link, SYS_unlink,
    SYS_symlink, SYS_readlink, SYS_chmod, SYS_fchmod, SYS_chown, SYS_fchown, SYS_lchown,
    SYS_umask, SYS_gettimeofday, SYS_getrlimit, SYS_getrusage, SYS_sysinfo, SYS_times,
    SYS_getuid, SYS_getgid, SYS_setuid, SYS_setgid, SYS_geteuid, SYS_getegid, SYS_setpgid,
    SYS_getppid, SYS_getpgrp, SYS_setsid, SYS_setreuid, SYS_setregid, SYS_getgroups,
    SYS_setgroups, SYS_setresuid, SYS_getresuid, SYS_setresgid, SYS_getresgid, SYS_getpgid,
    SYS_setfsuid, SYS_setfsgid, SYS_getsid, SYS_capget, SYS_capset, SYS_rt_sigpending,
    SYS_rt_sigtimedwait, SYS_rt_sigqueueinfo, SYS_rt_sigsuspend, SYS_sigaltstack, SYS_utime,
    SYS_mknod, SYS_statfs, SYS_fstatfs, SYS_getpriority, SYS_setpriority, SYS_sched_setparam,
    SYS_sched_getparam, SYS_sched_setscheduler, SYS_sched_getscheduler,
    SYS_sched_get_priority_max, SYS_sched_get_priority_min, SYS_sched_rr_get_interval,
    SYS_mlock, SYS_munlock, SYS_mlockall, SYS_munlockall, SYS_prctl, SYS_arch_prctl,
    SYS_setrlimit, SYS_sync, SYS_gettid, SYS_readahead, SYS_setxattr, SYS_lsetxattr,
    SYS_fsetxattr, SYS_getxattr, SYS_lgetxattr, SYS_fgetxattr, SYS_listxattr, SYS_llistxattr,
    SYS_flistxattr, SYS_removexattr, SYS_lremovexattr, SYS_fremovexattr, SYS_tkill, SYS_time,
    SYS_futex, SYS_sched_setaffinity, SYS_sched_getaffinity, SYS_io_setup, SYS_io_destroy,
    SYS_io_getevents, SYS_io_submit, SYS_io_cancel, SYS_epoll_create, SYS_getdents64,
    SYS_set_tid_address, SYS_restart_syscall, SYS_semtimedop, SYS_fadvise64, SYS_timer_create,
    SYS_timer_settime, SYS_timer_gettime, SYS_timer_getoverrun, SYS_timer_delete,
    SYS_clock_gettime, SYS_clock_getres, SYS_clock_nanosleep, SYS_exit_group, SYS_epoll_wait,
    SYS_epoll_ctl, SYS_tgkill, SYS_utimes, SYS_mq_open, SYS_mq_unlink, SYS_mq_timedsend,
    SYS_mq_timedreceive, SYS_mq_notify, SYS_mq_getsetattr, SYS_waitid, SYS_inotify_init,
    SYS_inotify_add_watch, SYS_inotify_rm_watch, SYS_openat, SYS_mkdirat, SYS_mknodat,
    SYS_fchownat, SYS_futimesat, SYS_newfstatat, SYS_unlinkat, SYS_renameat, SYS_linkat,
    SYS_symlinkat, SYS_readlinkat, SYS_fchmodat, SYS_faccessat, SYS_pselect6, SYS_ppoll,
    SYS_set_robust_list, SYS_get_robust_list, SYS_splice, SYS_tee, SYS_sync_file_range,
    SYS_vmsplice, SYS_utimensat, SYS_epoll_pwait, SYS_signalfd, SYS_timerfd_create, SYS_eventfd,
    SYS_fallocate, SYS_timerfd_settime, SYS_timerfd_gettime, SYS_accept4, SYS_signalfd4,
    SYS_eventfd2, SYS_epoll_create1, SYS_dup3, SYS_pipe2, SYS_inotify_init1, SYS_preadv,
    SYS_pwritev, SYS_rt_tgsigqueueinfo, SYS_recvmmsg, SYS_prlimit64, SYS_syncfs, SYS_sendmmsg,
    SYS_getcpu, SYS_sched_setattr, SYS_sched_getattr, SYS_renameat2, SYS_seccomp,
    SYS_getrandom, SYS_memfd_create, SYS_execveat, SYS_mlock2, SYS_copy_file_range,
    SYS_preadv2, SYS_pwritev2, SYS_statx, SYS_rseq, SYS_pidfd_send_signal, SYS_pidfd_open,
    SYS_close_range, SYS_openat2, SYS_faccessat2, SYS_epoll_pwait2, SYS_futex_waitv, END};

/* The JVM: HotSpot's NUMA support (-XX:+UseNUMA, through libnuma) sets its own memory policy. */
static const int allow_jvm[] = {SYS_get_mempolicy, SYS_set_mempolicy, SYS_mbind, END};

/* V8 (node): memory protection keys guard its JIT code (pkey_alloc at start-up). */
static const int allow_node[] = {SYS_pkey_alloc, SYS_pkey_free, SYS_pkey_mprotect, END};

/* Refused with EPERM in every family: the kernel surface no job needs. */
static const int denied[] = {
    /* other processes' memory and state */
    SYS_ptrace, SYS_process_vm_readv, SYS_process_vm_writev, SYS_kcmp, SYS_pidfd_getfd,
    SYS_process_madvise, SYS_move_pages, SYS_migrate_pages,
    /* large kernel subsystems */
    SYS_bpf, SYS_perf_event_open, SYS_userfaultfd, SYS_io_uring_setup, SYS_io_uring_enter,
    SYS_io_uring_register, SYS_keyctl, SYS_add_key, SYS_request_key, SYS_fanotify_init,
    SYS_fanotify_mark, SYS_open_by_handle_at, SYS_name_to_handle_at, SYS_modify_ldt,
    /* namespaces and mounts */
    SYS_unshare, SYS_setns, SYS_mount, SYS_umount2, SYS_pivot_root, SYS_chroot, SYS_fsopen,
    SYS_fsconfig, SYS_fsmount, SYS_fspick, SYS_move_mount, SYS_open_tree, SYS_mount_setattr,
    /* the machine itself */
    SYS_kexec_load, SYS_kexec_file_load, SYS_reboot, SYS_init_module, SYS_finit_module,
    SYS_delete_module, SYS_swapon, SYS_swapoff, SYS_acct, SYS_quotactl, SYS_quotactl_fd,
    SYS_syslog, SYS_settimeofday, SYS_clock_settime, SYS_clock_adjtime, SYS_adjtimex,
    SYS_sethostname, SYS_setdomainname, SYS_iopl, SYS_ioperm, SYS_vhangup,
    /* obsolete */
    SYS_uselib, SYS__sysctl, SYS_create_module, SYS_get_kernel_syms, SYS_query_module,
    SYS_nfsservctl, SYS_afs_syscall, SYS_tuxcall, SYS_security, SYS_vserver, SYS_getpmsg,
    SYS_putpmsg, SYS_epoll_ctl_old, SYS_epoll_wait_old, SYS_ustat, SYS_sysfs,
    SYS_lookup_dcookie, SYS_remap_file_pages, SYS_set_thread_area, SYS_get_thread_area, END};

struct family {
  const char *name;
  const int *extra;
};

static const struct family families[] = {
    {"default", NULL}, {"jvm", allow_jvm}, {"node", allow_node}};

#define MAX_FILTER 1024
static struct sock_filter filter[MAX_FILTER];
static unsigned short filter_len;

static void emit(struct sock_filter insn) {
  if (filter_len == MAX_FILTER) usage("seccomp filter too long");
  filter[filter_len++] = insn;
}

#define STMT(code, k) emit((struct sock_filter)BPF_STMT(code, k))
#define JUMP(code, k, jt, jf) emit((struct sock_filter)BPF_JUMP(code, k, jt, jf))
#define LOAD_NR() STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr))
/* The low 32 bits of argument 0 (x86_64 is little-endian); every test below is on them. */
#define LOAD_ARG0() STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, args[0]))

/* Each rule ends in its own return, so the jumps are short and never need patching. */
static void rule_nr(int nr, unsigned int action) {
  JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned int)nr, 0, 1);
  STMT(BPF_RET | BPF_K, action);
}

static void rule_list(const int *list, unsigned int action) {
  for (; list && *list != END; list++) rule_nr(*list, action);
}

/* nr: if (arg0 & mask) deny else allow. */
static void rule_arg_mask(int nr, unsigned int mask, unsigned int deny) {
  JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned int)nr, 0, 4);
  LOAD_ARG0();
  JUMP(BPF_JMP | BPF_JSET | BPF_K, mask, 0, 1);
  STMT(BPF_RET | BPF_K, deny);
  STMT(BPF_RET | BPF_K, SC_ALLOW);
}

/* nr: if arg0 is one of `values` allow else deny. */
static void rule_arg_in(int nr, const unsigned int *values, int n, unsigned int deny) {
  JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned int)nr, 0, (unsigned char)(n + 3));
  LOAD_ARG0();
  for (int k = 0; k < n; k++) JUMP(BPF_JMP | BPF_JEQ | BPF_K, values[k], (unsigned char)(n - k), 0);
  STMT(BPF_RET | BPF_K, deny);
  STMT(BPF_RET | BPF_K, SC_ALLOW);
}

static const struct family *find_family(const char *name) {
  for (size_t k = 0; k < sizeof families / sizeof families[0]; k++) {
    if (strcmp(families[k].name, name) == 0) return &families[k];
  }
  usage("--seccomp wants default, jvm or node");
  return NULL;
}

static void install_seccomp(const struct family *family) {
  static const unsigned int personalities[] = {0xffffffffu, 0};
  static const unsigned int socket_families[] = {AF_UNIX, AF_INET, AF_INET6, AF_NETLINK};
  filter_len = 0;
  STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
  JUMP(BPF_JMP | BPF_JEQ | BPF_K, AUDIT_ARCH_X86_64, 1, 0);
  STMT(BPF_RET | BPF_K, SC_KILL);
  LOAD_NR();
  /* Numbers from 0x80000000 (syscall(-1)...) are no syscall: ENOSYS, as the kernel says. */
  JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x80000000u, 0, 1);
  STMT(BPF_RET | BPF_K, SC_ERRNO(ENOSYS));
  JUMP(BPF_JMP | BPF_JSET | BPF_K, X32_BIT, 0, 1);
  STMT(BPF_RET | BPF_K, SC_KILL);
  rule_nr(SYS_clone3, SC_ERRNO(ENOSYS));
  rule_arg_mask(SYS_clone, CLONE_NEW_FLAGS, SC_ERRNO(EPERM));
  /* Each rule above loads an argument only on its own number, and returns: A is still nr. */
  rule_arg_in(SYS_personality, personalities, 2, SC_ERRNO(EPERM));
  rule_arg_in(SYS_socket, socket_families, 4, SC_ERRNO(EAFNOSUPPORT));
  rule_arg_in(SYS_socketpair, socket_families, 4, SC_ERRNO(EAFNOSUPPORT));
  rule_list(denied, SC_ERRNO(EPERM));
  rule_list(allow_base, SC_ALLOW);
  rule_list(family->extra, SC_ALLOW);
  STMT(BPF_RET | BPF_K, SC_ERRNO(ENOSYS));
  struct sock_fprog prog = {.len = filter_len, .filter = filter};
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog, 0, 0) != 0) die("seccomp", family->name);
}


/* ---- the compile server's client (--connect) ---- */

extern char **environ;

enum { FRAME_STDOUT = 1, FRAME_STDERR = 2, FRAME_STATUS = 3, FRAME_DECLINE = 4 };

static int write_all(int fd, const char *buf, size_t len) {
  while (len > 0) {
    ssize_t n = write(fd, buf, len);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return -1;
    buf += n;
    len -= (size_t)n;
  }
  return 0;
}

/* Reads exactly len bytes; 0 at a clean end of file before the first byte, -1 otherwise. */
static int read_exact(int fd, unsigned char *buf, size_t len) {
  size_t got = 0;
  while (got < len) {
    ssize_t n = read(fd, buf + got, len - got);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return got == 0 && n == 0 ? 0 : -1;
    got += (size_t)n;
  }
  return 1;
}

/*
 * The request: the working directory, then each argument after the first `skip`, each ended by
 * a NUL byte; then end of file. The answer: frames of a kind byte and a 4-byte big-endian
 * length, then that many bytes: stdout, stderr, the exit status (one byte), or a decline.
 */
static int connect_server(const char *socket_path, const char *skip_text, char **argv) {
  unsigned long long skip;
  if (parse_u64(skip_text, &skip) || skip > 64) usage("--skip wants a number up to 64");
  int argc = 0;
  while (argv[argc]) argc++;
  if (argc == 0 || (unsigned long long)argc < skip) usage("no program after --");
  struct sockaddr_un addr = {.sun_family = AF_UNIX};
  if (strlen(socket_path) >= sizeof addr.sun_path) usage("the socket path is too long");
  strcpy(addr.sun_path, socket_path);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0 || connect(fd, (struct sockaddr *)&addr, sizeof addr) != 0) {
    if (fd >= 0) close(fd);
    exec_program(argv, environ);
  }
  static char cwd[4096];
  if (!getcwd(cwd, sizeof cwd)) die("getcwd", NULL);
  int failed = write_all(fd, cwd, strlen(cwd) + 1);
  for (int k = (int)skip; k < argc && !failed; k++)
    failed = write_all(fd, argv[k], strlen(argv[k]) + 1);
  if (failed || shutdown(fd, SHUT_WR) != 0) {
    fprintf(stderr, "runner-exec: cannot send the command to the compile server: %s\n",
            strerror(errno));
    return FAIL;
  }
  static unsigned char buf[65536];
  int answered = 0;
  for (;;) {
    unsigned char head[5];
    int r = read_exact(fd, head, sizeof head);
    if (r == 0 && !answered) {
      close(fd);
      exec_program(argv, environ);
    }
    if (r <= 0) break;
    answered = 1;
    size_t len = ((size_t)head[1] << 24) | ((size_t)head[2] << 16) | ((size_t)head[3] << 8) | head[4];
    if (head[0] == FRAME_DECLINE) {
      close(fd);
      exec_program(argv, environ);
    }
    if (head[0] == FRAME_STATUS) {
      if (len != 1 || read_exact(fd, buf, 1) != 1) break;
      return buf[0];
    }
    int out = head[0] == FRAME_STDOUT ? 1 : head[0] == FRAME_STDERR ? 2 : -1;
    if (out < 0) break;
    while (len > 0) {
      size_t part = len < sizeof buf ? len : sizeof buf;
      if (read_exact(fd, buf, part) != 1) goto ended;
      /* A closed stdout (the stage is ending) must not stop the status from being read. */
      (void)write_all(out, (const char *)buf, part);
      len -= part;
    }
  }
ended:
  fprintf(stderr, "runner-exec: the compile server ended without an exit status\n");
  return FAIL;
}

/*
 * The reseed server: started by the agent before the snapshot is taken, it waits on stdin, so
 * that a reseed after a restore costs no fork and no exec (the first process started after a
 * restore pays for translating the whole fork and exec path again under TCG). Each request is
 * an 8-byte little-endian UNIX_TIME_MS, a 4-byte little-endian byte count N (at most 4096) and
 * N entropy bytes; each answer is one line, the bytes credited or "error: STEP: REASON". It ends
 * at end of file, or on a request it cannot read (a short or oversized one) after answering it.
 */
static int reseed_server(void) {
  static struct seed_pool pool;
  for (;;) {
    unsigned char head[12];
    int r = read_exact(0, head, sizeof head);
    if (r == 0) return 0;
    char line[600];
    unsigned long long ms = 0;
    unsigned int n = 0;
    for (int k = 7; k >= 0; k--) ms = (ms << 8) | head[k];
    for (int k = 11; k >= 8; k--) n = (n << 8) | head[k];
    if (r < 0 || n > MAX_ENTROPY || read_exact(0, pool.buf, n) != 1) {
      snprintf(line, sizeof line, "error: a short or oversized request\n");
      (void)write_all(1, line, strlen(line));
      return FAIL;
    }
    const char *err;
    if (apply_seed(ms, &pool.info, n, &err) != 0)
      snprintf(line, sizeof line, "error: %s: %s\n", err, strerror(errno));
    else
      snprintf(line, sizeof line, "%u\n", n);
    if (write_all(1, line, strlen(line)) != 0) return FAIL;
  }
}

int main(int argc, char **argv) {
  if (argc == 3 && strcmp(argv[1], "--reseed") == 0) return reseed(argv[2]);
  if (argc == 2 && strcmp(argv[1], "--reseed-server") == 0) return reseed_server();
  if (argc >= 7 && strcmp(argv[1], "--connect") == 0 && strcmp(argv[3], "--skip") == 0 &&
      strcmp(argv[5], "--") == 0)
    return connect_server(argv[2], argv[4], argv + 6);
  const char *cgroup = NULL;
  const struct family *seccomp = NULL;
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
    } else if (strcmp(a, "--seccomp") == 0) {
      seccomp = find_family(v);
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
  /* Last: from here on only the calls the exec (or its failure) makes. */
  if (seccomp) install_seccomp(seccomp);
  exec_program(argv + i, envp);
  return FAIL;
}
