/** The shared engine's replies to a shim (src/shared-engine/engine.ts), driven in-process through a recording control socket. */
import { describe, expect, it } from 'vitest';
import { FD_RESERVE } from '../../src/core/constants.js';
import { FdBudget } from '../../src/core/fd-limit.js';
import { silentLog } from '../../src/core/logger.js';
import { installedVersion } from '../../src/core/version.js';
import { readDockerEnv } from '../../src/docker/docker-env.js';
import type { Control } from '../../src/shared-engine/engine-protocol.js';
import { SharedEngine } from '../../src/shared-engine/engine.js';

/** A control socket that records what the engine sends and closes. */
function recordingControl(): { ctl: Control; sent: string[]; closed: number[] } {
  const sent: string[] = [];
  const closed: number[] = [];
  const none = (): never => {
    throw new Error('not used here');
  };
  const ctl: Control = {
    ctlListen: none,
    ctlSend: (_conn, msg) => sent.push(msg.toString()) > 0,
    ctlClose: (conn) => closed.push(conn),
    ctlStopListening: () => {},
    ctlRequest: none,
    ctlPath: none,
    ctlTakeOver: none,
  };
  return { ctl, sent, closed };
}

const registration = (...argv: string[]): Buffer => Buffer.from(`R${[String(argv.length), ...argv, 'protocol=2'].join('\0')}\0`);

describe('SharedEngine.register', () => {
  it('a registration past the fd budget is answered "1" and why, in one line, and its connection closed', async () => {
    const { ctl, sent, closed } = recordingControl();
    // RLIMIT_NOFILE at the reserve: a budget of 0 fds, so not even the control connection fits.
    const engine = new SharedEngine(silentLog, readDockerEnv({}), ctl, FdBudget.forProcess(0, false, FD_RESERVE), installedVersion());
    await engine.register(
      7,
      registration('-proto', 'tcp', '-host-ip', '127.0.0.1', '-host-port', '1', '-container-ip', '127.0.0.1', '-container-port', '1'),
      -1,
    );
    expect(sent).toEqual(['1file descriptor budget spent: 0 of 0 taken (raise RLIMIT_NOFILE)']);
    expect(closed).toEqual([7]);
    expect(engine.entries.size).toBe(0);
  });

  it('a malformed registration is answered "1malformed registration" and closed', async () => {
    const { ctl, sent, closed } = recordingControl();
    const engine = new SharedEngine(silentLog, readDockerEnv({}), ctl, FdBudget.forProcess(0, false, 1024), installedVersion());
    await engine.register(3, Buffer.from('R5\0a\0'), -1);
    expect(sent).toEqual(['1malformed registration']);
    expect(closed).toEqual([3]);
  });
});
