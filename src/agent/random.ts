import { closeSync, openSync, readSync } from 'node:fs';

/**
 * `n` bytes from the kernel's CRNG (/dev/urandom), never from OpenSSL's generator in this
 * process. The agent lives on in every clone of a snapshot: OpenSSL's state in its memory is
 * the same in each (it reseeds only on a new pid or after minutes), while the kernel's is made
 * fresh by the host's reseed right after the restore. So whatever the agent draws after a
 * restore (a stage's cgroup name, which a job can read in /proc/self/cgroup) differs per clone.
 */
export function kernelRandomBytes(n: number): Buffer {
  const buf = Buffer.alloc(n);
  const fd = openSync('/dev/urandom', 'r');
  try {
    for (let off = 0; off < n;) off += readSync(fd, buf, off, n - off, null);
  } finally {
    closeSync(fd);
  }
  return buf;
}
