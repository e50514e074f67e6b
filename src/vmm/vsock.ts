import { connect, type Socket } from 'node:net';
import { VmBootFailedError, VmTimeoutError } from '../errors.js';

/** The longest line Firecracker answers a CONNECT with (`OK 1073741824\n`). */
const MAX_HANDSHAKE_LINE_BYTES = 64;

/**
 * Opens one host-initiated hybrid vsock connection: connect to the vsock unix socket, send
 * `CONNECT <port>\n`, read `OK <host port>\n`. Firecracker closes the connection instead when
 * nothing in the guest listens on the port (yet). Bytes after the OK line already belong to
 * the guest's stream: they are pushed back, and the socket is returned paused with them.
 * Fails with VM_BOOT_FAILED (VM_TIMEOUT without an answer); the driver retries until its
 * deadline, as a guest that is still starting refuses the same way.
 */
export function vsockConnect(path: string, port: number, timeoutMs: number): Promise<Socket> {
  return new Promise<Socket>((resolveSocket, reject) => {
    const socket = connect(path);
    let buffered = Buffer.alloc(0);
    const finish = (err: Error | null): void => {
      clearTimeout(timer);
      socket.off('data', onData);
      socket.off('error', onError);
      socket.off('close', onClose);
      if (err === null) {
        resolveSocket(socket);
      } else {
        socket.destroy();
        reject(err);
      }
    };
    const onData = (chunk: Buffer): void => {
      buffered = Buffer.concat([buffered, chunk]);
      const newline = buffered.indexOf(0x0a);
      if (newline < 0) {
        if (buffered.length > MAX_HANDSHAKE_LINE_BYTES) {
          finish(new VmBootFailedError(`the answer to CONNECT ${port} is not a line`));
        }
        return;
      }
      const line = buffered.subarray(0, newline).toString('latin1');
      if (!/^OK \d+$/.test(line)) {
        finish(
          new VmBootFailedError(
            `CONNECT ${port} was answered ${JSON.stringify(line.slice(0, 40))}`,
          ),
        );
        return;
      }
      socket.pause();
      const rest = buffered.subarray(newline + 1);
      if (rest.length > 0) socket.unshift(rest);
      finish(null);
    };
    const onError = (err: Error): void => finish(err);
    const onClose = (): void =>
      finish(new VmBootFailedError(`closed before OK (nothing listens on vsock port ${port} yet)`));
    const timer = setTimeout(
      () => finish(new VmTimeoutError(`no answer to CONNECT ${port} within ${timeoutMs} ms`)),
      timeoutMs,
    );
    socket.once('connect', () => socket.write(`CONNECT ${port}\n`));
    socket.on('data', onData);
    socket.once('error', onError);
    socket.once('close', onClose);
  });
}
