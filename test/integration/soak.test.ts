/**
 * The short soak in CI (bench/soak.mjs has the long one): for 5 s, 20 concurrent connections
 * with random sizes, chunks, pauses and half-closes, every byte checked both ways, while 2000
 * idle connections are held open through the same proxy. Asserts zero loss and bounded memory.
 */
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/proxy.js';

const run = promisify(execFile);

describe('soak (short)', () => {
  it('soak: random transfers with half-closes lose no byte while 2000 idle connections are held', async () => {
    const { stdout } = await run(process.execPath, [join(ROOT, 'bench/soak.mjs'), '--seconds', '5', '--conns', '20', '--hold', '2000'], { timeout: 60_000 });
    const s = JSON.parse(stdout.trim().split('\n').pop() as string) as Record<string, unknown>;
    expect(s.lossless).toBe(true);
    expect(s.mismatches).toBe(0);
    expect(s.errors).toBe(0);
    expect(s.heldConnections).toBe(2000);
    expect(s.heldStillWorking).toBe('100/100');
    expect(s.connections as number).toBeGreaterThan(20);
    expect(s.maxRssMiB as number).toBeLessThan(200); // 2000 held + 20 busy connections
  }, 70_000);
});
