/** Runs once before all test files: removes namespaces left behind by killed runs. */
import { removeStaleNamespaces } from './netns.js';

export default function setup(): void {
  removeStaleNamespaces();
}
