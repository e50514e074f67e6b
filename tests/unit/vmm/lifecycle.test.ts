import { describe, expect, it } from 'vitest';
import {
  VM_COMMANDS,
  VM_STATES,
  VmStateMachine,
  type VmCommand,
  type VmState,
} from '../../../src/vmm/index.js';

/** A machine brought to `state` by legal moves only. */
function machineIn(state: VmState): VmStateMachine {
  const m = new VmStateMachine('v');
  const path: Record<VmState, VmState[]> = {
    starting: [],
    running: ['running'],
    paused: ['running', 'paused'],
    snapshotted: ['running', 'paused', 'snapshotted'],
    destroyed: ['destroyed'],
  };
  for (const next of path[state]) m.to(next);
  expect(m.state).toBe(state);
  return m;
}

// Written out again here, not read from the source: a change of the table must be deliberate.
const LEGAL: Record<VmCommand, VmState[]> = {
  configure: ['starting'],
  loadSnapshot: ['starting'],
  awaitAgent: ['starting'],
  talk: ['running'],
  snapshot: ['running'],
  destroy: ['starting', 'running', 'paused', 'snapshotted', 'destroyed'],
};

describe('the VM lifecycle table', () => {
  it('knows every command and state', () => {
    expect([...VM_COMMANDS].sort()).toEqual(Object.keys(LEGAL).sort());
    expect(VM_STATES).toEqual(['starting', 'running', 'paused', 'snapshotted', 'destroyed']);
  });

  for (const command of Object.keys(LEGAL) as VmCommand[]) {
    for (const state of VM_STATES) {
      const legal = LEGAL[command].includes(state);
      it(`${command} while ${state}: ${legal ? 'legal' : 'VM_STATE'}`, () => {
        const m = machineIn(state);
        if (legal) {
          expect(() => m.begin(command)).not.toThrow();
        } else {
          expect(() => m.begin(command)).toThrow(
            expect.objectContaining({
              code: 'VM_STATE',
              message: expect.stringContaining(`cannot ${command} while ${state}`) as string,
            }) as Error,
          );
        }
        // Checking a command never moves the machine.
        expect(m.state).toBe(state);
      });
    }
  }

  it('refuses illegal transitions, naming both states', () => {
    const moves: Record<VmState, VmState[]> = {
      starting: ['running', 'destroyed'],
      running: ['paused', 'destroyed'],
      paused: ['running', 'snapshotted', 'destroyed'],
      snapshotted: ['destroyed'],
      destroyed: [],
    };
    for (const from of VM_STATES) {
      for (const to of VM_STATES) {
        const m = machineIn(from);
        if (moves[from].includes(to)) {
          m.to(to);
          expect(m.state).toBe(to);
        } else {
          expect(() => m.to(to)).toThrow(`cannot go from ${from} to ${to}`);
        }
      }
    }
  });
});
