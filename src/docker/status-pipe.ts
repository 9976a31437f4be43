/**
 * dockerd's status pipe on fd 3. dockerd does ONE read() of 2 bytes: anything but exactly "0\n"
 * is a failure, so "0\n" must go out in a single write; on failure we send "1\n" + message (no
 * trailing newline), which dockerd shows as "Error starting userland proxy: <message>".
 *
 * Standalone users may start us with fd 3 closed. Node then opens its own epoll instance as fd 3
 * (an anonymous inode with no file type), so we only ever write to and close fd 3 when it is a
 * pipe, file, character device or socket that was handed to us.
 */
import { closeSync, fstatSync, writeSync } from 'node:fs';
import { STATUS_FD } from '../core/constants.js';

let used = false;

/** True when fd 3 is something a parent gave us to report on. */
export function statusPipeAvailable(): boolean {
  if (used) return false;
  try {
    const s = fstatSync(STATUS_FD);
    return s.isFIFO() || s.isFile() || s.isCharacterDevice() || s.isSocket();
  } catch {
    return false;
  }
}

function send(text: string): void {
  if (!statusPipeAvailable()) return;
  used = true;
  try {
    writeSync(STATUS_FD, text);
  } catch {
    // The parent went away (EPIPE): nothing left to tell.
  }
  try {
    closeSync(STATUS_FD);
  } catch {
    // already closed
  }
}

/** Reports readiness: "0\n" in one write, then closes fd 3. */
export function reportReady(): void {
  send('0\n');
}

/** Reports a startup failure: "1\n" + one-line message, then closes fd 3. */
export function reportFailure(message: string): void {
  send(`1\n${message}`);
}
