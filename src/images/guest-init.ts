/**
 * The guest's init, installed in every rootfs as `/sbin/runner-init` (mode 0755).
 *
 * Contract with the initramfs (which is not built here): after loading the virtio, console,
 * vsock and overlay modules it mounts the base image and the language layer read-only as the
 * lower layers of an overlay with a tmpfs upper layer, `switch_root`s into it and execs `/sbin/runner-init` as PID 1. The root
 * is then writable, in RAM; nothing the guest does reaches the image.
 *
 * Contract with the host, through the kernel command line (keys are read from /proc/cmdline:
 * the kernel keeps dotted keys away from init's arguments and environment):
 * - `runner.transport=serial` (default): the agent speaks on the virtio-serial port named by
 *   `runner.port` (default `runner`), reached as /dev/virtio-ports/<port>.
 * - `runner.transport=vsock`: the agent listens on /run/runner/agent.sock and socat bridges
 *   vsock port 5000 to it.
 * - `runner.seed=HEX`: mixed into the kernel's random pool before the agent starts (cold boots;
 *   after a snapshot restore the agent reseeds itself).
 * - `runner.debug=1`: trace this script on the console.
 *
 * When the agent (or, with vsock, the bridge) exits, the guest powers off, so the host sees
 * the VM die instead of a silent guest.
 *
 * Written in POSIX sh for dash (Debian's /bin/sh): `wait PID` in dash waits with
 * waitpid(-1, ...), so PID 1 also reaps the orphans the kernel hands it while it waits.
 * The text avoids every host-specific value: the image builder writes it byte for byte, and its
 * hash is part of the image identity.
 */
export const GUEST_INIT_PATH = '/sbin/runner-init';

/**
 * The ext4 labels of a layered VM's two drives (src/images/kernel.ts finds them by these): the
 * base image (Debian, the agent, this init) and the language's layer stacked over it.
 */
export const GUEST_DISK_LABELS = { base: 'runner-base', layer: 'runner-layer' } as const;

/** The kernel argument that tells the initramfs to stack the two labelled drives. */
export const LAYERED_ROOT_ARG = 'runner.root=layers';

/** Where the agent bundle and the language definitions live in the guest. */
export const GUEST_AGENT_PATH = '/opt/runner/agent.mjs';
/** The static exec helper (src/agent/native/runner-exec.c). */
export const GUEST_EXEC_HELPER_PATH = '/opt/runner/runner-exec';
export const GUEST_LANGUAGES_DIR = '/opt/runner/languages';
/** The unprivileged user that runs the programs. */
export const GUEST_RUNNER_UID = 1000;
export const GUEST_RUNNER_GID = 1000;
/** The vsock port the agent is reached on when runner.transport=vsock. */
export const GUEST_VSOCK_PORT = 5000;
/** The cgroup under which the agent makes one cgroup per job. */
export const GUEST_CGROUP_ROOT = '/sys/fs/cgroup/runner';

/**
 * The guest's side of a networked VM's link (docs/network.md). The same in every VM: each
 * networked VM has a namespace of its own on the host, so the addresses never meet, and a
 * snapshot taken with the NIC would restore into any namespace. The gateway (the namespace's
 * end of the tap) also answers DNS: the host forwards its port 53 to the operator's resolver.
 * The initramfs configures eth0 (busybox `ip`: the language rootfs has no iproute2).
 */
export const GUEST_NET = {
  address: '10.254.0.2',
  gateway: '10.254.0.1',
  prefix: 30,
  mac: '02:72:63:00:00:02',
} as const;

export const GUEST_INIT_SCRIPT = `#!/bin/sh
# runner-init: PID 1 of a Runner Codes guest. Written by the image builder
# (src/images/guest-init.ts); see there for the contract with the initramfs and the host.
PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
umask 022

log() { echo "runner-init: $*" >&2; }

poweroff_now() {
  log "powering off: $*"
  echo o > /proc/sysrq-trigger 2>/dev/null
  sleep 2
  # No ACPI poweroff: reboot instead, which ends the VM as well under QEMU -no-reboot.
  echo b > /proc/sysrq-trigger 2>/dev/null
  sleep 5
  exit 1
}

is_mounted() {
  while read -r _dev _mnt _rest; do
    [ "$_mnt" = "$1" ] && return 0
  done < /proc/mounts
  return 1
}

mount_fs() { # TYPE TARGET OPTIONS
  is_mounted "$2" && return 0
  mkdir -p "$2" && mount -t "$1" -o "$3" "$1" "$2" && return 0
  log "cannot mount $1 at $2"
  return 1
}

# --- file systems -------------------------------------------------------------------------
# hidepid=invisible: user code sees only its own processes in /proc, not the agent or init.
if [ ! -e /proc/self/stat ]; then
  mkdir -p /proc
  mount -t proc -o nosuid,nodev,noexec,hidepid=invisible proc /proc || log "cannot mount /proc"
else
  mount -o remount,hidepid=invisible /proc || log "cannot remount /proc with hidepid"
fi
mount_fs sysfs /sys nosuid,nodev,noexec
mount_fs devtmpfs /dev mode=0755,nosuid
mount_fs devpts /dev/pts nosuid,noexec,gid=5,mode=0620,ptmxmode=0666
[ -e /dev/ptmx ] || ln -s pts/ptmx /dev/ptmx
[ -e /dev/fd ] || ln -s /proc/self/fd /dev/fd
[ -e /dev/stdin ] || ln -s /proc/self/fd/0 /dev/stdin
[ -e /dev/stdout ] || ln -s /proc/self/fd/1 /dev/stdout
[ -e /dev/stderr ] || ln -s /proc/self/fd/2 /dev/stderr
mount_fs tmpfs /run nosuid,nodev,mode=0755

# --- scratch: one sized tmpfs for everything a job can write ---------------------------------
# The job's work dirs and the shared /tmp, /var/tmp and /dev/shm (bind mounts of folders in it)
# share one size, half the guest's memory, so no job can fill the guest through them. tmpfs
# pages are charged to the memory cgroup of the stage that writes them: a job's files count
# against its memory limit. Files outlive the stage's cgroup, so the agent empties the shared
# folders after every stage (--scratch) and runs each test case in a fresh work dir.
mount_fs tmpfs /run/scratch nosuid,nodev,mode=0755,size=50%
mkdir -p /run/scratch/tmp /run/scratch/var-tmp /run/scratch/shm /run/scratch/work /tmp /var/tmp /dev/shm
chmod 1777 /run/scratch/tmp /run/scratch/var-tmp /run/scratch/shm
chmod 0711 /run/scratch/work
mount --bind /run/scratch/tmp /tmp || log "cannot bind /run/scratch/tmp to /tmp"
mount --bind /run/scratch/var-tmp /var/tmp || log "cannot bind /run/scratch/var-tmp to /var/tmp"
mount --bind /run/scratch/shm /dev/shm || log "cannot bind /run/scratch/shm to /dev/shm"

# --- kernel command line --------------------------------------------------------------------
transport=serial
port=runner
seed=
cmdline=
read -r cmdline < /proc/cmdline || true
set -f # split the command line on spaces, without globbing
for arg in $cmdline; do
  case "$arg" in
    runner.transport=*) transport=\${arg#runner.transport=} ;;
    runner.port=*) port=\${arg#runner.port=} ;;
    runner.seed=*) seed=\${arg#runner.seed=} ;;
    runner.debug=1) set -x ;;
  esac
done
set +f

# --- cgroups ----------------------------------------------------------------------------------
# cgroup v2 lets a cgroup hand controllers to its children only while it holds no processes
# itself (the root is exempt, runner/ is not). So init, and with it the agent it starts, moves
# into the leaf agent/ first; runner/ stays empty and holds one child cgroup per job.
cg=/sys/fs/cgroup
if mount_fs cgroup2 "$cg" nosuid,nodev,noexec && [ -e "$cg/cgroup.subtree_control" ]; then
  mkdir -p "$cg/agent" "$cg/runner"
  echo $$ > "$cg/agent/cgroup.procs" || log "cannot move init into $cg/agent"
  for c in cpu memory pids io; do
    if echo "+$c" > "$cg/cgroup.subtree_control" 2>/dev/null; then
      echo "+$c" > "$cg/runner/cgroup.subtree_control" 2>/dev/null || log "cannot delegate $c to $cg/runner"
    else
      log "cgroup controller $c unavailable"
    fi
  done
else
  log "no cgroup v2: jobs run without cgroup limits"
fi

# --- kernel surface ---------------------------------------------------------------------------
# Behind the seccomp filter of every job (runner-exec --seccomp), the kernel's own switches:
# no user namespaces at all (nothing in the guest needs them), no unprivileged BPF (for good),
# userfaultfd, perf or kexec; ptrace by root only; no kernel log or kernel addresses for users.
# The 6.1 guest kernel has no kernel.io_uring_disabled (6.6+): the filter refuses io_uring.
while read -r key value; do
  echo "$value" > "/proc/sys/$key" 2>/dev/null || log "cannot set $key to $value"
done <<'SYSCTL'
user/max_user_namespaces 0
kernel/unprivileged_userns_clone 0
kernel/unprivileged_bpf_disabled 1
vm/unprivileged_userfaultfd 0
kernel/perf_event_paranoid 3
kernel/kexec_load_disabled 1
kernel/yama/ptrace_scope 2
kernel/dmesg_restrict 1
kernel/kptr_restrict 2
SYSCTL

# --- identity, network, entropy -------------------------------------------------------------
echo runner > /proc/sys/kernel/hostname 2>/dev/null || log "cannot set the hostname"
if command -v ip >/dev/null 2>&1; then
  ip link set lo up 2>/dev/null || log "cannot bring up lo"
fi
if [ -n "$seed" ]; then
  # Writing to /dev/urandom mixes the bytes into the pool (without crediting entropy).
  printf '%s' "$seed" > /dev/urandom 2>/dev/null || log "cannot seed /dev/urandom"
fi

# --- the agent --------------------------------------------------------------------------------
# Without udev nothing makes /dev/virtio-ports/NAME: find the port whose sysfs name matches and
# link its /dev/vportNpM node there ourselves.
find_port() {
  for d in /sys/class/virtio-ports/vport*; do
    [ -r "$d/name" ] || continue
    name=
    read -r name < "$d/name" || true
    if [ "$name" = "$1" ]; then
      echo "/dev/\${d##*/}"
      return 0
    fi
  done
  return 1
}

wait_port() { # NAME; up to about 10 s
  tries=0
  while [ "$tries" -lt 200 ]; do
    [ -c "/dev/virtio-ports/$1" ] && return 0
    if dev=$(find_port "$1") && [ -c "$dev" ]; then
      mkdir -p /dev/virtio-ports
      ln -sf "$dev" "/dev/virtio-ports/$1"
      return 0
    fi
    sleep 0.05
    tries=$((tries + 1))
  done
  return 1
}

agent_common="--languages /opt/runner/languages --uid 1000 --gid 1000 --cgroup-root /sys/fs/cgroup/runner --work-root /run/scratch/work --scratch /tmp,/var/tmp,/dev/shm --exec-helper /opt/runner/runner-exec"
agent_env="PATH=$PATH HOME=/root LANG=C.UTF-8 NODE_ENV=production"

case "$transport" in
  serial)
    wait_port "$port" || poweroff_now "no virtio-serial port named $port"
    # shellcheck disable=SC2086
    env -i $agent_env /usr/bin/node /opt/runner/agent.mjs --serial "/dev/virtio-ports/$port" $agent_common < /dev/null &
    agent_pid=$!
    ;;
  vsock)
    mkdir -p /run/runner
    chmod 0700 /run/runner
    # shellcheck disable=SC2086
    env -i $agent_env /usr/bin/node /opt/runner/agent.mjs --unix /run/runner/agent.sock $agent_common < /dev/null &
    agent_pid=$!
    (
      socat VSOCK-LISTEN:5000,fork,reuseaddr UNIX-CONNECT:/run/runner/agent.sock < /dev/null
      poweroff_now "the vsock bridge exited with status $?"
    ) &
    ;;
  *)
    poweroff_now "unknown runner.transport=$transport"
    ;;
esac

# PID 1: wait for the agent, reaping every orphan meanwhile (dash's wait does).
status=0
while kill -0 "$agent_pid" 2>/dev/null; do
  wait "$agent_pid"
  status=$?
done
poweroff_now "the agent exited with status $status"
`;
