#!/usr/bin/env node
/**
 * Entry point. With docker-proxy's flags (what dockerd passes) it runs docker mode; everything
 * docker mode does not need is loaded lazily so that a process per published port stays cheap.
 */
import { runDockerMode } from './docker-mode.js';

await runDockerMode(process.argv.slice(2));
