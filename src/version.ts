/** The package version, read from package.json next to dist/ (only when asked for). */
import { readFileSync } from 'node:fs';

/** Version string of this build. */
export function packageVersion(): string {
  // The single-file executable (deploy/sea) has no package.json beside it: its bundle sets this.
  const embedded = (globalThis as { __USERLAND_PROXY_VERSION__?: string }).__USERLAND_PROXY_VERSION__;
  if (embedded !== undefined) return embedded;
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? 'unknown';
  } catch {
    return 'unknown';
  }
}
