/**
 * Every file the program finds relative to its own code, anchored here, beside cli.ts, so that
 * each anchor means the same in dist/ and in the single-file executable (deploy/sea/build.mjs
 * makes import.meta.url the executable's dist/cli.js there). Nothing else uses import.meta.url.
 */

/** The installation's root: the shared engine's socket name is a hash of its real path. */
export const INSTALL_ROOT = new URL('..', import.meta.url);
/** package.json: the version, and what an in-place install replaced (audit N9). */
export const PACKAGE_JSON = new URL('../package.json', import.meta.url);
/** The CLI, which a new engine runs (userland-proxy upgrade). */
export const CLI_JS = new URL('./cli.js', import.meta.url);
/** A standalone mapping's worker thread. */
export const WORKER_JS = new URL('./standalone/worker.js', import.meta.url);
/** The native addon (node-gyp's output). */
export const ADDON = new URL('../build/Release/engine.node', import.meta.url);
