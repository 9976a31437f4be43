/**
 * Settings docker mode takes from the environment: dockerd passes its own environment but no
 * extra flags, so this is the only way to tune a proxy it spawns. Which variables, their bounds,
 * defaults and types: the settings table (settings.ts), rows for mode 'docker'.
 */
import { ENV_PREFIX } from '../core/constants.js';
import { parseSetting, readSettings, type SettingsOf } from '../core/settings.js';

/** Docker-mode settings from the environment (metrics, sharedIdleTimeoutMs, sharedDrainTimeoutMs: the shared engine only). */
export type DockerEnv = SettingsOf<'docker'>;

/** Reads and validates the docker-mode variables; throws a one-line ProxyError naming the value. */
export function readDockerEnv(env: NodeJS.ProcessEnv): DockerEnv {
  return readSettings('docker', (s) => {
    const name = `${ENV_PREFIX}${s.env}`;
    const raw = env[name];
    return raw === undefined || raw === '' ? undefined : parseSetting(s, raw, 'UPROXY_ERR_BAD_ENV', name);
  });
}
