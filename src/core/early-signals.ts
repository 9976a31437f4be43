/**
 * Signals during startup. Until a mode is ready to handle them itself, SIGTERM and SIGINT end the
 * process with exit 0 (nothing is serving yet, so nothing is cut) and SIGHUP is ignored: without
 * this, the default action kills us by signal while modules load (up to 0.5 s in standalone mode),
 * and systemd's Restart=on-failure counts a death by SIGHUP as a clean stop.
 */
const exitClean = (): void => process.exit(0);
const ignore = (): void => {};

/** Installs the startup handlers; the first thing the entry point does. */
export function holdSignals(): void {
  process.on('SIGTERM', exitClean);
  process.on('SIGINT', exitClean);
  process.on('SIGHUP', ignore);
}

/** Removes the startup handler of each signal, once the mode's own handler is installed. */
export function releaseSignals(...signals: ('SIGTERM' | 'SIGINT' | 'SIGHUP')[]): void {
  for (const s of signals) process.off(s, s === 'SIGHUP' ? ignore : exitClean);
}
