/**
 * The metrics exposition against real Prometheus tooling (Debian's prometheus package, installed
 * by .ci/setup): `promtool check metrics` lints both standalone /metrics and docker mode's
 * textfile, and a real Prometheus server started here scrapes /metrics and answers a query with
 * the exact counter value.
 */
import { execFileSync, spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { useBackend } from '../helpers/netns.js';
import { freePort, sleep, tcpRoundTrip } from '../helpers/net.js';
import { startProxy, dockerArgv } from '../helpers/proxy.js';
import { get, sample, startStandalone } from '../helpers/standalone.js';
import { killTracked } from '../helpers/processes.js';

const HAVE = existsSync('/usr/bin/promtool') && existsSync('/usr/bin/prometheus');
const dir = mkdtempSync(join(tmpdir(), 'upt-prom-'));
let prometheus: ChildProcess | null = null;

if (!HAVE) console.warn("SKIPPED: promtool/prometheus not installed (.ci/setup installs Debian's prometheus)");
const backend = useBackend(['--echo', '7000']);
afterAll(() => {
  prometheus?.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
});
afterEach(async () => {
  await killTracked();
});

function promtoolCheck(text: string): string {
  const file = join(dir, `check-${Date.now()}.prom`);
  writeFileSync(file, text);
  return execFileSync('sh', ['-c', `promtool check metrics < "${file}" 2>&1`], { encoding: 'utf8' });
}

describe.skipIf(!HAVE)('prometheus tooling', () => {
  it('promtool check metrics passes on standalone /metrics (TCP and UDP mappings, default process metrics)', async () => {
    const [tp, up, mp] = [await freePort(), await freePort(), await freePort()];
    await startStandalone([
      'run',
      '-p',
      `127.0.0.1:${tp}:${backend.ipv4}:7000`,
      '-p',
      `127.0.0.1:${up}:${backend.ipv4}:7000/udp`,
      '--metrics',
      `127.0.0.1:${mp}`,
    ]);
    await tcpRoundTrip('127.0.0.1', tp, Buffer.from('x'));
    const { body } = await get(`http://127.0.0.1:${mp}/metrics`);
    expect(promtoolCheck(body)).toBe('');
  });

  it('docker mode keeps a textfile-collector file up to date, lint-clean, and removes it on exit', async () => {
    const tf = mkdtempSync(join(dir, 'textfile-'));
    const port = await freePort();
    const p = await startProxy(dockerArgv('tcp', '127.0.0.1', port, backend.ipv4, '7000'), { env: { USERLAND_PROXY_TEXTFILE_DIR: tf } });
    const file = join(tf, `tcp_127.0.0.1_${port}.prom`);
    expect(readdirSync(tf)).toEqual([`tcp_127.0.0.1_${port}.prom`]);
    expect(sample(readFileSync(file, 'utf8'), 'userland_proxy_connections_accepted_total', { mapping: `tcp/127.0.0.1:${port}` })).toBe(0);
    for (let i = 0; i < 3; i++) await tcpRoundTrip('127.0.0.1', port, Buffer.from('abc'));
    let accepted = 0;
    for (let i = 0; i < 80 && accepted !== 3; i++) {
      await sleep(100);
      accepted = sample(readFileSync(file, 'utf8'), 'userland_proxy_connections_accepted_total', { mapping: `tcp/127.0.0.1:${port}` }) ?? 0;
    }
    expect(accepted).toBe(3);
    expect(promtoolCheck(readFileSync(file, 'utf8'))).toBe('');
    expect((await p.stop('SIGINT')).code).toBe(0);
    expect(readdirSync(tf)).toEqual([]);
  });

  it('a real Prometheus server scrapes /metrics and its query API returns the exact counter', async () => {
    const [tp, mp, pp] = [await freePort(), await freePort(), await freePort()];
    await startStandalone(['run', '-p', `127.0.0.1:${tp}:${backend.ipv4}:7000`, '--metrics', `127.0.0.1:${mp}`]);
    for (let i = 0; i < 5; i++) await tcpRoundTrip('127.0.0.1', tp, Buffer.alloc(1000, i));
    const cfg = join(dir, 'prometheus.yml');
    writeFileSync(
      cfg,
      `global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: userland-proxy\n    static_configs:\n      - targets: ['127.0.0.1:${mp}']\n`,
    );
    prometheus = spawn('prometheus', [`--config.file=${cfg}`, `--storage.tsdb.path=${join(dir, 'tsdb')}`, `--web.listen-address=127.0.0.1:${pp}`], {
      stdio: 'ignore',
    });
    const query = encodeURIComponent(`userland_proxy_bytes_total{mapping="tcp/127.0.0.1:${tp}",direction="in"}`);
    let value: string | undefined;
    for (let i = 0; i < 100 && value === undefined; i++) {
      await sleep(200);
      const r = await get(`http://127.0.0.1:${pp}/api/v1/query?query=${query}`).catch(() => null);
      if (r?.status !== 200) continue;
      const json = JSON.parse(r.body) as { data: { result: { value: [number, string] }[] } };
      value = json.data.result[0]?.value[1];
    }
    expect(value).toBe('5000');
    prometheus.kill('SIGTERM');
    await new Promise((r) => prometheus?.once('exit', r));
    prometheus = null;
  });
});
