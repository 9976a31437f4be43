import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { contractMismatch, type NativeContract } from '../../src/data-path/native-engine.js';
import { ROOT } from '../helpers/proxy.js';

const ADDON = join(ROOT, 'build/Release/engine.node');

describe('contractMismatch()', () => {
  it.skipIf(!existsSync(ADDON))('the built addon and the TypeScript side agree on every shared table', () => {
    const { contract } = createRequire(import.meta.url)(ADDON) as { contract: NativeContract };
    expect(contractMismatch(contract)).toBeNull();
  });

  it('a reordered counter or event, other buckets, a record size or a missing contract is refused, named', () => {
    const good: NativeContract = {
      events: ['limit', 'blocked', 'fdBudget', 'acceptError', 'connectError', 'connectTimeout', 'idle', 'linger', 'flowLimit', 'flowError', 'timeWait'],
      eventSlots: 5,
      tcpCounters: [
        'bytesIn',
        'bytesOut',
        'pausesClient',
        'pausesUpstream',
        'accepted',
        'active',
        'acceptErrors',
        'rejectedLimit',
        'rejectedBlocked',
        'aborted',
        'idleTimeouts',
        'lingerTimeouts',
        'connectErrors.refused',
        'connectErrors.timeout',
        'connectErrors.unreachable',
        'connectErrors.other',
        'connectErrors.noLocalPort',
        'timeWaitEnded',
      ],
      connectBuckets: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
      lifetimeBuckets: [0.01, 0.1, 0.5, 1, 5, 10, 60, 300, 900, 1800, 3600],
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
    const swapped = ['bytesOut', 'bytesIn', ...good.tcpCounters.slice(2)];
    expect(contractMismatch({ ...good, tcpCounters: swapped })).toBe(`tcpCounters ${JSON.stringify(swapped)}, expected ${JSON.stringify(good.tcpCounters)}`);
    expect(contractMismatch({ ...good, events: ['blocked', 'limit', ...good.events.slice(2)] })).toMatch(/^events /);
    expect(contractMismatch({ ...good, lifetimeBuckets: [0.01, 0.1] })).toMatch(/^lifetimeBuckets /);
    expect(contractMismatch({ ...good, aclRecordBytes: 20 })).toMatch(/^aclRecordBytes 20, expected 18$/);
    expect(contractMismatch({ ...good, eventSlots: 3 })).toMatch(/^eventSlots 3, expected 5$/);
    expect(contractMismatch(undefined)).toMatch(/^events undefined/);
  });
});
