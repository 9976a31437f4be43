/**
 * deploy/ validated by the real tools: `promtool check config` on the scrape config,
 * `promtool check rules` and `promtool test rules` (every alert fires on the series meant to
 * trigger it) on the alerting rules; `systemd-analyze verify` on the systemd unit.
 */
import { execFile } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { ROOT } from '../helpers/proxy.js';

const run = promisify(execFile);
const HAVE = existsSync('/usr/bin/promtool');
const dir = join(ROOT, 'deploy/prometheus');

describe.skipIf(!HAVE)('deploy/prometheus with promtool', () => {
  it('promtool check config, check rules and test rules pass', async () => {
    expect((await run('promtool', ['check', 'config', 'prometheus.yml'], { cwd: dir })).stdout).toContain('SUCCESS');
    expect((await run('promtool', ['check', 'rules', 'alerts.yml'], { cwd: dir })).stdout).toContain('SUCCESS: 5 rules found');
    expect((await run('promtool', ['test', 'rules', 'alerts.test.yml'], { cwd: dir })).stdout).toContain('SUCCESS');
  });
});

const HAVE_SYSTEMD = existsSync('/usr/bin/systemd-analyze');

describe.skipIf(!HAVE_SYSTEMD)('deploy/systemd with systemd-analyze', () => {
  it('systemd-analyze verify accepts the unit (and rejects a broken copy: the check is real)', async () => {
    const tmp = mkdtempSync(join(tmpdir(), 'upt-systemd-'));
    try {
      // verify checks that ExecStart exists: point it at this checkout's launcher.
      const unit = readFileSync(join(ROOT, 'deploy/systemd/userland-proxy.service'), 'utf8').replaceAll(
        '/opt/userland-proxy/bin/userland-proxy',
        join(ROOT, 'bin/userland-proxy'),
      );
      expect(unit).not.toMatch(/^MemoryDenyWriteExecute=yes/m); // V8's JIT aborts under it
      writeFileSync(join(tmp, 'userland-proxy.service'), unit);
      const ok = await run('systemd-analyze', ['verify', join(tmp, 'userland-proxy.service')]);
      expect(ok.stderr).toBe('');
      writeFileSync(join(tmp, 'broken.service'), unit.replace('Restart=on-failure', 'Restart=sometimes'));
      const bad = await run('systemd-analyze', ['verify', join(tmp, 'broken.service')]).then(
        (r) => r.stderr,
        (e: { stderr: string }) => e.stderr,
      );
      expect(bad).toMatch(/restart specifier/i);
      // The environment file parses as KEY=value lines.
      const env = readFileSync(join(ROOT, 'deploy/systemd/userland-proxy.env'), 'utf8')
        .split('\n')
        .filter((l) => l && !l.startsWith('#'));
      for (const l of env) expect(l).toMatch(/^[A-Z_]+=/);
    } finally {
      rmSync(tmp, { recursive: true, force: true });
    }
  });
});
