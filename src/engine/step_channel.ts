// How rank 0 hands a forward step to the other rank threads: through shared memory, not
// postMessage. A posted message reaches an idle worker thread through its event loop; on 4 ×
// H200 the other ranks started each batch-1 decode step's CUDA graph ~110 µs after rank 0
// (rank 0's first all-reduce waited that long, kernel stamps, 2026-11-27) — 2.5% of a tp-4
// step. Here a worker that has run a step blocks in Atomics.wait on the channel for the next
// one and wakes within microseconds.
//
// Every command from rank 0 gets the next number. A step that fits the buffer is written there
// (then its number is published and waiters are woken); anything else — allocKv, warmup,
// close, a step too large — goes by postMessage with its number, and the channel publishes the
// number with kind MESSAGE so a waiting worker goes back to its event loop to read it. Workers
// run commands strictly in number order, whichever way they came.
//
// The buffer holds one command at a time: before publishing the next, rank 0 waits until every
// worker has acknowledged the last step it wrote (in practice long done: a step's collectives
// need every rank to have read it), so a worker never finds its step overwritten.

import type { SeqSpan, StepBatch } from "../runtime/backend.js";

const SEQ = 0; // the latest command number published
const KIND = 1; // what command SEQ is: STEP_* (its batch in the payload) or MESSAGE
const LENGTH = 2; // payload ints
const HEADER = 4;
export const MESSAGE = 0;
export const STEP_FORWARD = 1;
/** Greedy steps (ForwardModel.queueArgmax, which forwardArgmax waits for): CHAIN takes its ids from the previous queued step's picks. */
export const STEP_QUEUE = 2;
export const STEP_CHAIN = 3;
/** Sampled steps on GPUs (ForwardModel.queueSample): the other ranks receive rank 0's draws; CHAIN as for STEP_CHAIN. */
export const STEP_SAMPLE_QUEUE = 4;
export const STEP_SAMPLE_CHAIN = 5;
export type StepKind = typeof STEP_FORWARD | typeof STEP_QUEUE | typeof STEP_CHAIN | typeof STEP_SAMPLE_QUEUE | typeof STEP_SAMPLE_CHAIN;
/** Payload capacity in ints: batch-1..64 decode steps and short prefills take a few thousand. */
const PAYLOAD_INTS = 1 << 18;
/** How long a worker blocks for the next step before it returns to its event loop (ms). */
const WAIT_MS = 100;
/** How long rank 0 waits for a worker to take a step before it calls the worker lost (ms). */
const ACK_TIMEOUT_MS = 60_000;

export interface StepChannelInit {
  /** [header | payload]: Int32 words. */
  buffer: SharedArrayBuffer;
  /** Per worker (rank − 1): the last command number it has taken from the buffer. */
  acks: SharedArrayBuffer;
}

export function createStepChannel(workers: number): StepChannelInit {
  return {
    buffer: new SharedArrayBuffer((HEADER + PAYLOAD_INTS) * 4),
    acks: new SharedArrayBuffer(Math.max(1, workers) * 4),
  };
}

/** Ints a batch takes in the payload. */
function payloadInts(b: StepBatch): number {
  let n = 3 + 2 * b.ids.length + b.logitRows.length;
  for (const s of b.seqs) n += 7 + s.fullSlots.length + (s.swaSlots === s.fullSlots ? 0 : s.swaSlots.length);
  return n;
}

/** Rank 0's end. */
export class StepSender {
  private readonly header: Int32Array;
  private readonly payload: Int32Array;
  private readonly acks: Int32Array;
  private seq = 0;
  /** The number of the last step written to the buffer (0: none). */
  private lastWritten = 0;

  constructor(init: StepChannelInit) {
    this.header = new Int32Array(init.buffer, 0, HEADER);
    this.payload = new Int32Array(init.buffer, HEADER * 4);
    this.acks = new Int32Array(init.acks);
  }

  /** A command that goes by postMessage: its number, published so a waiting worker goes to read it. */
  message(): number {
    this.awaitAcks(); // the header is about to change: the last step must have been taken
    const seq = ++this.seq;
    this.publish(seq, MESSAGE, 0);
    return seq;
  }

  /** Writes the step to the buffer and wakes the workers; false (nothing sent) when it does not fit. */
  step(kind: StepKind, b: StepBatch): boolean {
    const n = payloadInts(b);
    if (n > this.payload.length) return false;
    this.awaitAcks();
    const p = this.payload;
    let at = 0;
    p[at++] = b.ids.length;
    p[at++] = b.logitRows.length;
    p[at++] = b.seqs.length;
    p.set(b.ids, at);
    at += b.ids.length;
    p.set(b.positions, at);
    at += b.positions.length;
    p.set(b.logitRows, at);
    at += b.logitRows.length;
    for (const s of b.seqs) {
      const same = s.swaSlots === s.fullSlots;
      p[at++] = s.qStart;
      p[at++] = s.qLen;
      p[at++] = s.kvLen;
      p[at++] = s.row;
      p[at++] = s.slotsFrom;
      p[at++] = s.fullSlots.length;
      p[at++] = same ? 1 : 0;
      p.set(s.fullSlots, at);
      at += s.fullSlots.length;
      if (!same) {
        p.set(s.swaSlots, at);
        at += s.swaSlots.length;
      }
    }
    const seq = ++this.seq;
    this.lastWritten = seq;
    this.publish(seq, kind, at);
    return true;
  }

  private publish(seq: number, kind: number, length: number): void {
    Atomics.store(this.header, KIND, kind);
    Atomics.store(this.header, LENGTH, length);
    Atomics.store(this.header, SEQ, seq); // last: a reader that sees seq sees kind and payload
    Atomics.notify(this.header, SEQ);
  }

  /** Every worker has taken the last step written (so the header and payload may change); a worker gone quiet is an error. */
  private awaitAcks(): void {
    if (this.lastWritten === 0) return;
    const start = performance.now();
    for (let w = 0; w < this.acks.length; w++) {
      for (;;) {
        const seen = Atomics.load(this.acks, w);
        if (seen >= this.lastWritten) break;
        if (performance.now() - start > ACK_TIMEOUT_MS) {
          throw new Error(`tensor-parallel rank ${w + 1} did not take step ${this.lastWritten} within ${ACK_TIMEOUT_MS / 1000} s (it took ${seen})`);
        }
        Atomics.wait(this.acks, w, seen, 100);
      }
    }
  }
}

export type StepCommand = { kind: StepKind; batch: StepBatch };

/** A worker's end (worker `index` = rank − 1). */
export class StepReceiver {
  private readonly header: Int32Array;
  private readonly payload: Int32Array;
  private readonly acks: Int32Array;

  constructor(init: StepChannelInit, private readonly index: number) {
    this.header = new Int32Array(init.buffer, 0, HEADER);
    this.payload = new Int32Array(init.buffer, HEADER * 4);
    this.acks = new Int32Array(init.acks);
  }

  /**
   * Command `seq` if it is a step in the buffer (taken and acknowledged); "message" if it is
   * (or may yet be) a posted message; "none" if it was not published within `waitMs`.
   */
  take(seq: number, waitMs = WAIT_MS): StepCommand | "message" | "none" {
    let published = Atomics.load(this.header, SEQ);
    if (published < seq) {
      Atomics.wait(this.header, SEQ, published, waitMs);
      published = Atomics.load(this.header, SEQ);
      if (published < seq) return "none";
    }
    // The buffer holds the latest command only: an older number can only have come by message.
    if (published > seq) return "message";
    const kind = Atomics.load(this.header, KIND);
    if (kind === MESSAGE) return "message";
    const batch = this.read();
    Atomics.store(this.acks, this.index, seq);
    Atomics.notify(this.acks, this.index);
    return { kind: kind as StepCommand["kind"], batch };
  }

  private read(): StepBatch {
    const p = this.payload;
    let at = 0;
    const nTok = p[at++], nLogit = p[at++], nSeq = p[at++];
    const take = (n: number) => p.slice(at, (at += n));
    const ids = take(nTok);
    const positions = take(nTok);
    const logitRows = take(nLogit);
    const seqs: SeqSpan[] = [];
    for (let i = 0; i < nSeq; i++) {
      const qStart = p[at++], qLen = p[at++], kvLen = p[at++], row = p[at++], slotsFrom = p[at++], nSlots = p[at++], same = p[at++];
      const fullSlots = take(nSlots);
      const swaSlots = same ? fullSlots : take(nSlots);
      seqs.push({ qStart, qLen, kvLen, row, slotsFrom, fullSlots, swaSlots });
    }
    return { ids, positions, logitRows, seqs };
  }
}
