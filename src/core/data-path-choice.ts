/**
 * The data path a mapping runs on: `native` (the addon: splice(2), batched UDP, on its own
 * thread) or `js` (node:net and node:dgram), and `auto`, what a user may ask for (native when the
 * addon loads). USERLAND_PROXY_ENGINE and the `engine` setting name it; native-engine.ts decides.
 */

/** What a user may ask for. */
export type EngineChoice = 'auto' | 'native' | 'js';
/** What runs. */
export type EngineName = 'native' | 'js';
/** The values the setting accepts. */
export const ENGINE_CHOICES: readonly EngineChoice[] = ['auto', 'native', 'js'];

/** Parses an engine choice (auto, native, js); the message says what is accepted. */
export function parseEngine(v: unknown): EngineChoice {
  if (typeof v === 'string' && (ENGINE_CHOICES as readonly string[]).includes(v)) return v as EngineChoice;
  throw new Error(`use one of ${ENGINE_CHOICES.join(', ')}`);
}
