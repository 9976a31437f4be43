/**
 * Runs once around all test files: removes namespaces left behind by killed runs before, and
 * after the run ends every shared engine the run's shims started (they outlive their shims by
 * the idle timeout; vitest.config.ts gives them a name of the run's own).
 */
import { killEngines } from './shared-engines.js';
import { removeStaleNamespaces } from './netns.js';

export default function setup(): () => void {
  removeStaleNamespaces();
  return () => killEngines();
}
