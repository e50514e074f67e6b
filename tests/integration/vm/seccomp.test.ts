import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { Engine } from '../../../src/pool/engine.js';
import type { JobResult } from '../../../src/pool/index.js';
import { ensureImages, testEngine, vmSkipReason } from '../../support/vm.js';

const skip = vmSkipReason();
if (skip) console.warn(`skipping the seccomp tests in real VMs: ${skip}`);

const out = (r: JobResult, stream: 'stdout' | 'stderr' = 'stdout'): string =>
  Buffer.from(r.run?.[stream] ?? '', 'base64').toString();

/** `name RESULT` lines as a map. */
const lines = (text: string): Record<string, string> =>
  Object.fromEntries(
    text
      .trim()
      .split('\n')
      .map((l) => l.split(' ') as [string, string]),
  );

/** Every denied class, as the kernel-surface calls a job might try (EPERM from the filter). */
const DENIED = [
  'ptrace',
  'process_vm_readv',
  'bpf',
  'perf_event_open',
  'userfaultfd',
  'add_key',
  'keyctl',
  'kexec_load',
  'mount',
  'umount2',
  'fsopen',
  'open_tree',
  'chroot',
  'pivot_root',
  'unshare',
  'setns',
  'clone_newuser',
  'clone_newns',
  'io_uring_setup',
  'personality',
  'uselib',
];

/** Tries each class through syscall(2) and prints `name ERRNO` (or `name ok`). */
const C_PROBE = String.raw`#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
static void try(const char *name, long r) {
  printf("%s %s\n", name, r == -1 ? strerrorname_np(errno) : "ok");
}
int main(void) {
  try("ptrace", syscall(SYS_ptrace, 0 /* PTRACE_TRACEME */, 0, 0, 0));
  try("process_vm_readv", syscall(SYS_process_vm_readv, getppid(), 0, 0, 0, 0, 0));
  try("bpf", syscall(SYS_bpf, 0, 0, 0));
  try("perf_event_open", syscall(SYS_perf_event_open, 0, 0, -1, -1, 0));
  try("userfaultfd", syscall(SYS_userfaultfd, 0));
  try("add_key", syscall(SYS_add_key, "user", "k", "v", 1, -3));
  try("keyctl", syscall(SYS_keyctl, 0, -3, 0));
  try("kexec_load", syscall(SYS_kexec_load, 0, 0, 0, 0));
  try("mount", syscall(SYS_mount, "none", "/tmp", "tmpfs", 0, 0));
  try("umount2", syscall(SYS_umount2, "/tmp", 0));
  try("fsopen", syscall(SYS_fsopen, "tmpfs", 0));
  try("open_tree", syscall(SYS_open_tree, -100, "/", 1));
  try("chroot", syscall(SYS_chroot, "/"));
  try("pivot_root", syscall(SYS_pivot_root, "/", "/"));
  try("unshare", syscall(SYS_unshare, CLONE_NEWUSER));
  try("setns", syscall(SYS_setns, 0, 0));
  try("clone_newuser", syscall(SYS_clone, CLONE_NEWUSER | SIGCHLD, 0, 0, 0, 0));
  try("clone_newns", syscall(SYS_clone, CLONE_NEWNS | SIGCHLD, 0, 0, 0, 0));
  try("io_uring_setup", syscall(SYS_io_uring_setup, 1, 0));
  try("personality", syscall(SYS_personality, 0x0040000 /* ADDR_NO_RANDOMIZE */));
  try("uselib", syscall(SYS_uselib, "/nothing"));
  try("clone3", syscall(SYS_clone3, 0, 0));
  try("socket_vsock", socket(40 /* AF_VSOCK */, SOCK_STREAM, 0));
  try("socket_packet", socket(17 /* AF_PACKET */, SOCK_RAW, 0));
  try("socket_unix", socket(AF_UNIX, SOCK_STREAM, 0));
  try("personality_query", syscall(SYS_personality, 0xffffffff));
  pid_t child = fork();
  if (child == 0) _exit(7);
  int status = 0;
  try("fork", child > 0 && waitpid(child, &status, 0) == child && WEXITSTATUS(status) == 7 ? 0 : -1);
  FILE *f = fopen("/proc/self/status", "r");
  char line[256];
  while (f && fgets(line, sizeof line, f)) {
    int mode;
    if (sscanf(line, "Seccomp: %d", &mode) == 1) printf("seccomp_mode %d\n", mode);
  }
  return 0;
}
`;

/** The same from Python: ctypes' syscall(2), with errno, and os functions where there are. */
const PY_PROBE = String.raw`import ctypes, errno, os, socket
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def sc(name, nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) if isinstance(a, int) else a for a in args])
    print(name, errno.errorcode[ctypes.get_errno()] if r == -1 else "ok")
sc("ptrace", 101, 0, 0, 0, 0)
sc("process_vm_readv", 310, os.getppid(), 0, 0, 0, 0, 0)
sc("bpf", 321, 0, 0, 0)
sc("perf_event_open", 298, 0, 0, -1, -1, 0)
sc("userfaultfd", 323, 0)
sc("add_key", 248, b"user", b"k", b"v", 1, -3)
sc("keyctl", 250, 0, -3, 0)
sc("kexec_load", 246, 0, 0, 0, 0)
sc("mount", 165, b"none", b"/tmp", b"tmpfs", 0, 0)
sc("umount2", 166, b"/tmp", 0)
sc("fsopen", 430, b"tmpfs", 0)
sc("open_tree", 428, -100, b"/", 1)
sc("chroot", 161, b"/")
sc("pivot_root", 155, b"/", b"/")
sc("unshare", 272, 0x10000000)
sc("setns", 308, 0, 0)
sc("clone_newuser", 56, 0x10000000 | 17, 0, 0, 0, 0)
sc("clone_newns", 56, 0x00020000 | 17, 0, 0, 0, 0)
sc("io_uring_setup", 425, 1, 0)
sc("personality", 135, 0x0040000)
sc("uselib", 134, b"/nothing")
sc("clone3", 435, 0, 0)
for name, fam in (("socket_vsock", 40), ("socket_packet", 17)):
    try:
        socket.socket(fam, socket.SOCK_STREAM if fam == 40 else socket.SOCK_RAW).close()
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
try:
    os.chroot("/")
    print("os_chroot ok")
except OSError as e:
    print("os_chroot", errno.errorcode[e.errno])
r, w = os.pipe()
pid = os.fork()
if pid == 0:
    os._exit(7)
print("fork", "ok" if os.waitpid(pid, 0)[1] >> 8 == 7 else "bad")
`;

/** One child sleeps; its sibling tries to attach to it with ptrace and reports what it got. */
const PY_SIBLING = String.raw`import ctypes, errno, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.restype = ctypes.c_long
sleeper = os.fork()
if sleeper == 0:
    time.sleep(5)
    os._exit(0)
tracer = os.fork()
if tracer == 0:
    r = libc.ptrace(ctypes.c_long(16), ctypes.c_long(sleeper), None, None)  # PTRACE_ATTACH
    print("ptrace_sibling", "ok" if r == 0 else errno.errorcode[ctypes.get_errno()], flush=True)
    try:
        with open(f"/proc/{sleeper}/mem", "rb") as f:
            f.read(1)
        print("proc_mem ok", flush=True)
    except OSError as e:
        print("proc_mem", errno.errorcode[e.errno], flush=True)
    os._exit(0)
os.waitpid(tracer, 0)
os.kill(sleeper, 9)
os.waitpid(sleeper, 0)
`;

/** unshare -r, mount, and the guest's sysctls, from bash. */
const BASH_PROBE = String.raw`mkdir -p "$HOME/m"
unshare -r true 2>&1; echo "unshare_r $?"
unshare -U true 2>&1; echo "unshare_u $?"
mount -t tmpfs none "$HOME/m" 2>&1; echo "mount $?"
echo "max_user_namespaces $(cat /proc/sys/user/max_user_namespaces)"
echo "unprivileged_bpf_disabled $(cat /proc/sys/kernel/unprivileged_bpf_disabled)"
echo "kexec_load_disabled $(cat /proc/sys/kernel/kexec_load_disabled)"
echo "ptrace_scope $(cat /proc/sys/kernel/yama/ptrace_scope)"
grep '^Seccomp:' /proc/self/status
echo "normal $(echo hi | tr a-z A-Z)"
`;

/**
 * The seccomp filter of runner-exec and the guest's sysctls, in real VMs: every denied class
 * from C and from Python fails with EPERM and the program reports it, a sibling cannot be
 * traced, `unshare -r` and `mount` fail, and ordinary work goes on.
 */
describe.skipIf(skip !== null)('seccomp for user code in real VMs', () => {
  let engine: Engine;

  beforeAll(async () => {
    await ensureImages(['python', 'bash', 'c']);
    engine = await testEngine({ poolTarget: 0 });
  });

  afterAll(async () => {
    await engine?.close();
  });

  const run = (language: string, name: string, content: string): Promise<JobResult> =>
    engine.run(engine.prepare({ language, files: [{ name, content }] }));

  /** A probe's `name=answer` lines, checked for what every probe shares: each denied call
   * EPERM, clone3 ENOSYS, vsock and packet sockets EAFNOSUPPORT. */
  const deniedAsExpected = (text: string): Record<string, string> => {
    const got = lines(text);
    for (const name of DENIED) expect(got[name], name).toBe('EPERM');
    expect(got).toMatchObject({
      clone3: 'ENOSYS',
      socket_vsock: 'EAFNOSUPPORT',
      socket_packet: 'EAFNOSUPPORT',
    });
    return got;
  };

  it('C: every denied class gets EPERM through syscall(2), clone3 ENOSYS, the rest works', async () => {
    const r = await run('c', 'main.c', C_PROBE);
    expect(r.compile?.status, Buffer.from(r.compile?.stderr ?? '', 'base64').toString()).toBe('ok');
    expect(r.status, out(r, 'stderr')).toBe('ok');
    const got = deniedAsExpected(out(r));
    expect(got).toMatchObject({
      socket_unix: 'ok',
      personality_query: 'ok',
      fork: 'ok',
      // 2: SECCOMP_MODE_FILTER.
      seccomp_mode: '2',
    });
  });

  it('Python: every denied class gets EPERM through ctypes and os, and the job reports it', async () => {
    const r = await run('python', 'main.py', PY_PROBE);
    expect(r.status, out(r, 'stderr')).toBe('ok');
    const got = deniedAsExpected(out(r));
    expect(got).toMatchObject({
      os_chroot: 'EPERM',
      fork: 'ok',
    });
  });

  it('a sibling process cannot be traced', async () => {
    const r = await run('python', 'main.py', PY_SIBLING);
    expect(r.status, out(r, 'stderr')).toBe('ok');
    const got = lines(out(r));
    expect(got.ptrace_sibling).toBe('EPERM');
    // /proc/PID/mem needs ptrace access, which ptrace_scope 2 gives to root only.
    expect(got.proc_mem).toBe('EACCES');
  });

  it('bash: unshare -r and mount fail, user namespaces are off, ordinary commands run', async () => {
    const r = await run('bash', 'main.sh', BASH_PROBE);
    expect(r.status, out(r, 'stderr')).toBe('ok');
    const text = out(r);
    expect(text).toMatch(/unshare failed: Operation not permitted\nunshare_r 1\n/);
    expect(text).toMatch(/unshare_u 1\n/);
    expect(text).toMatch(/mount [1-9]\d*\n/);
    expect(text).not.toMatch(/^mount 0$/m);
    expect(
      lines(
        text
          .split('\n')
          .filter((l) => /^[a-z_]+ \S+$/.test(l))
          .join('\n'),
      ),
    ).toMatchObject({
      max_user_namespaces: '0',
      unprivileged_bpf_disabled: '1',
      kexec_load_disabled: '1',
      ptrace_scope: '2',
      normal: 'HI',
    });
    expect(text).toMatch(/^Seccomp:\s+2$/m);
  });
});
