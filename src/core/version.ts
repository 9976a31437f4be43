/** The package version, read from package.json next to dist/ (only when asked for). */
import { readFileSync, statSync } from 'node:fs';
import { PACKAGE_JSON } from '../paths.js';

/** Version string of this build. */
export function packageVersion(): string {
  // The single-file executable (deploy/sea) has no package.json beside it: its bundle sets this.
  const embedded = (globalThis as { __USERLAND_PROXY_VERSION__?: string }).__USERLAND_PROXY_VERSION__;
  if (embedded !== undefined) return embedded;
  try {
    const pkg = JSON.parse(readFileSync(PACKAGE_JSON, 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}

let installed: { key: string; version: string } | undefined;

/**
 * The version installed now: an in-place install may have replaced package.json since this
 * process read packageVersion(). Read again only when the file changed (a stat per call).
 */
export function installedVersion(): string {
  try {
    const st = statSync(PACKAGE_JSON);
    const key = `${st.ino}:${st.mtimeMs}:${st.size}`;
    if (installed?.key !== key) installed = { key, version: packageVersion() };
    return installed.version;
  } catch {
    return packageVersion();
  }
}
