/**
 * deploy/ validated by the real tools: `promtool check config` on the scrape config,
 * `promtool check rules` and `promtool test rules` (every alert fires on the series meant to
 * trigger it) on the alerting rules.
 */
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
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
