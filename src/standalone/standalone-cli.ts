/**
 * Standalone mode's command line (yargs): `run` forwards a set of mappings, `check` validates the
 * configuration and starts nothing. Loaded only for these subcommands, so docker mode never pays
 * for yargs (70-95 ms of startup).
 *
 *   userland-proxy run   [--publish SPEC]... [--config FILE] [--metrics HOST:PORT] [options]
 *   userland-proxy check [--publish SPEC]... [--config FILE] ...
 *
 * Exit: 0 clean stop or valid config; 2 invalid command line or configuration (nothing started);
 * 1 a mapping cannot bind (all-or-nothing: nothing keeps running).
 */
import yargs from 'yargs';
import { buildConfig, readConfigFile, type CliValues, type StandaloneConfig } from './config.js';
import { flagOf, settingsOf } from '../core/settings.js';
import { ENV_PREFIX, METRICS_MAX_CONNECTIONS, PROGRAM } from '../core/constants.js';
import { ProxyError, toProxyError } from '../core/errors.js';
import { releaseSignals } from '../core/early-signals.js';
import { createLogger, type Log } from '../core/logger.js';
import { Supervisor } from './supervisor.js';
import { exitOnInternalError, exitWith } from '../core/lifecycle.js';

function die(err: unknown): never {
  exitWith(err);
}

/** Loads the configuration from the three sources; the file path comes from --config or the env. */
function loadConfig(cli: CliValues): StandaloneConfig {
  const path = cli.config ?? process.env[`${ENV_PREFIX}CONFIG`];
  return buildConfig(cli, process.env, path ? readConfigFile(path) : undefined);
}

function describeConfig(c: StandaloneConfig): string {
  const lines = c.mappings.map((m) => {
    const n = m.hostPortEnd - m.hostPort + 1;
    return `  ${m.id} -> ${m.target.family === 6 ? `[${m.target.address}]` : m.target.address}:${m.targetPort}${n > 1 ? `-${m.targetPort + n - 1}` : ''}`;
  });
  return `${c.mappings.length} mapping(s):\n${lines.join('\n')}\n`;
}

/** Parses argv (subcommand first) and runs it. */
export async function runStandalone(argv: readonly string[]): Promise<void> {
  let parsed: Record<string, unknown>;
  try {
    parsed = await yargs([...argv])
      .scriptName(PROGRAM)
      .usage('$0 <command> [options]')
      .command('run', 'forward the configured mappings until SIGTERM/SIGINT; SIGHUP reloads')
      .command('check', 'validate the configuration and exit')
      .command('demo', 'forward a loopback port to a built-in HTTP and UDP echo backend, with metrics')
      .command('ls', "list the docker mappings of this network namespace's shared engine, with their counters")
      .command('upgrade', 'move every docker mapping to a new shared engine running the installed code, cutting no connection')
      .option('json', { type: 'boolean', default: false, describe: 'ls: one JSON object per line' }) // (cli.ts runs ls and upgrade)
      .option('port', { type: 'number', default: 8080, describe: 'demo: the port to forward (127.0.0.1)' })
      .option('metrics-port', { type: 'number', default: 9464, describe: 'demo: the metrics port (127.0.0.1)' })
      .demandCommand(1, 'give a command: run, check, demo, ls or upgrade (see: userland-proxy help; docker mode takes docker-proxy flags)')
      .option('config', { alias: 'c', type: 'string', describe: `JSON config file (or ${ENV_PREFIX}CONFIG)` })
      .options(
        Object.fromEntries(
          settingsOf('standalone').map((x) => [
            flagOf(x).slice(2),
            {
              type: 'string' as const,
              ...(x.kind === 'publish' || x.kind === 'cidrs' ? { array: true } : {}),
              ...(x.key === 'publish' ? { alias: 'p' } : {}),
              describe: `${x.description} (default ${x.shown}; ${ENV_PREFIX}${x.env})`,
            },
          ]),
        ),
      )
      .strict()
      .version(false)
      .help()
      .exitProcess(false)
      .fail((msg, err) => {
        throw new ProxyError('UPROXY_ERR_BAD_FLAG', err ? err.message : msg);
      })
      .parseAsync();
  } catch (err) {
    die(err);
  }
  if (parsed.help) process.exit(0);
  const command = String((parsed._ as unknown[])[0]);
  if (command === 'demo') {
    try {
      const { startDemo } = await import('./demo.js');
      const { config, banner } = await startDemo({ port: parsed.port as number, metricsPort: parsed.metricsPort as number });
      await run(() => config, config, `${banner}\n`);
    } catch (err) {
      die(err);
    }
    return;
  }
  if ((parsed._ as unknown[]).length > 1) die(new ProxyError('UPROXY_ERR_BAD_FLAG', `unexpected argument "${String((parsed._ as unknown[])[1])}"`));
  // yargs camel-cases each option into its config key (--drain-timeout -> drainTimeout).
  const cli = Object.fromEntries([...settingsOf('standalone').map((x) => x.key), 'config'].map((k) => [k, parsed[k]])) as CliValues;
  let config: StandaloneConfig;
  try {
    config = loadConfig(cli);
  } catch (err) {
    die(err);
  }
  if (command === 'check') {
    process.stdout.write(`configuration is valid: ${describeConfig(config)}`);
    process.exit(0);
  }
  if (command !== 'run') die(new ProxyError('UPROXY_ERR_BAD_FLAG', `unknown command "${command}"`));
  await run(() => loadConfig(cli), config);
}

/** Runs the configuration until a signal; `load` re-reads it on reload; `after` follows the ready line. */
async function run(load: () => StandaloneConfig, config: StandaloneConfig, after = ''): Promise<void> {
  let log: Log;
  try {
    log = await createLogger({ level: config.logLevel, file: config.logFile, humanOnTty: true });
  } catch (err) {
    die(err);
  }
  // A closed stdout (EPIPE) must not take the daemon down; a bug ends it with one line, not a dump.
  process.stdout.on('error', () => {});
  exitOnInternalError(() => ({ log }));
  const supervisor = new Supervisor(log, {
    crashMappingId: process.env[`${ENV_PREFIX}TEST_CRASH`],
    reservedFds: config.metrics ? METRICS_MAX_CONNECTIONS + 1 : 0,
  });
  let current = config;
  let stopping = false;
  const stop = (signal: NodeJS.Signals): void => {
    if (stopping) return;
    stopping = true;
    log.info({ signal, drainTimeoutMs: current.drainTimeoutMs }, 'stopping: draining connections');
    void supervisor.stopAll(current.drainTimeoutMs).then(() => {
      log.info({}, 'stopped');
      log.flush();
      process.exit(0);
    });
  };
  let ready = false;
  /** The tail of the reload chain; it never rejects, so one refused reload cannot block the next. */
  let reloading: Promise<unknown> = Promise.resolve();
  /**
   * Reloads once the previous reload is done, reading the file again every time; resolves a
   * one-line outcome, rejects with a one-line refusal. Every refusal is logged, whoever asked.
   */
  const reload = (trigger: 'SIGHUP' | 'http'): Promise<string> => {
    const run = reloading.then(async () => {
      if (stopping) return 'stopping';
      if (!ready) return 'not ready yet: starting';
      let next: StandaloneConfig;
      try {
        next = load();
      } catch (err) {
        const msg = `reload rejected, running configuration kept: ${toProxyError(err).message}`;
        log.error({ trigger }, msg);
        throw new Error(msg);
      }
      if (JSON.stringify(next.metrics) !== JSON.stringify(current.metrics) || next.logFile !== current.logFile || next.httpReload !== current.httpReload) {
        log.warn({}, 'the metrics address and options and the main log file take effect at the next start, not on reload');
      }
      try {
        const r = await supervisor.reload(next, next.drainTimeoutMs);
        current = next;
        log.info({ trigger, ...r }, 'configuration reloaded');
        return `reloaded: ${r.added} added, ${r.removed} removed, ${r.kept} unchanged`;
      } catch (err) {
        const msg = `reload failed, previous configuration restored: ${toProxyError(err).message}`;
        log.error({ trigger }, msg);
        throw new Error(msg);
      }
    });
    reloading = run.catch(() => {});
    return run;
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  releaseSignals('SIGTERM', 'SIGINT');
  try {
    if (config.metrics) {
      const { startEndpoint } = await import('../metrics/metrics-server.js');
      await startEndpoint({
        ...config.metrics,
        states: () => supervisor.states,
        source: supervisor,
        onReload: config.httpReload ? () => reload('http') : null,
      });
      log.info({ metrics: config.metrics }, 'metrics listening');
    }
    await supervisor.start(config);
  } catch (err) {
    die(err);
  }
  // SIGHUP was ignored until now (early-signals.ts): a reload needs a running configuration.
  ready = true;
  process.on('SIGHUP', () => void reload('SIGHUP').catch(() => {}));
  releaseSignals('SIGHUP');
  log.info({ mappings: config.mappings.map((m) => m.id) }, 'all mappings ready');
  // One write: whoever waits for "ready:" also gets what follows it (the demo's banner).
  process.stdout.write(`ready: ${describeConfig(config)}${after}`);
}
