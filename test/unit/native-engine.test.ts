import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { contractMismatch, type NativeContract } from '../../src/native-engine.js';
import { ROOT } from '../helpers/proxy.js';

const ADDON = join(ROOT, 'build/Release/engine.node');

describe('contractMismatch()', () => {
  it.skipIf(!existsSync(ADDON))('the built addon and the TypeScript side agree on every shared table', () => {
    const { contract } = createRequire(import.meta.url)(ADDON) as { contract: NativeContract };
    expect(contractMismatch(contract)).toBeNull();
  });

  it('a reordered counter, a changed close reason, a record size or a missing contract is refused, named', () => {
    const good: NativeContract = {
      closeReasons: { clean: 0, aborted: 1, idle: 2, linger: 3, closed: 4 },
      tcpCounters: ['bytesIn', 'bytesOut', 'pausesClient', 'pausesUpstream'],
      udpCounters: [
        'flowsCreated',
        'flowsActive',
        'flowsExpired',
        'datagramsIn',
        'bytesIn',
        'datagramsOut',
        'bytesOut',
        'droppedFlowLimit',
        'droppedQueueFull',
        'droppedSendError',
        'droppedBlocked',
        'refused',
      ],
      aclRecordBytes: 18,
      udpFlowBuffer: 1024 * 1024,
    };
    expect(contractMismatch(good)).toBeNull();
    expect(contractMismatch({ ...good, tcpCounters: ['bytesOut', 'bytesIn', 'pausesClient', 'pausesUpstream'] })).toBe(
      'tcpCounters ["bytesOut","bytesIn","pausesClient","pausesUpstream"], expected ["bytesIn","bytesOut","pausesClient","pausesUpstream"]',
    );
    expect(contractMismatch({ ...good, closeReasons: { ...good.closeReasons, idle: 3, linger: 2 } })).toMatch(/^closeReasons /);
    expect(contractMismatch({ ...good, aclRecordBytes: 20 })).toMatch(/^aclRecordBytes 20, expected 18$/);
    expect(contractMismatch(undefined)).toMatch(/^closeReasons undefined/);
  });
});
