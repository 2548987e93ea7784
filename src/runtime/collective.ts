// Collectives between tensor-parallel ranks. On GPUs this is NCCL inside the CUDA backend;
// this file is the host version: ranks are threads of one process that share memory, so the
// CPU backend runs real tensor/expert parallelism (and CI tests it) with no GPU.

export interface Collective {
  readonly rank: number;
  readonly size: number;
  /** Sums `x` element-wise over all ranks, in place on every rank. */
  allReduce(x: Float32Array): void;
  /** Every rank's `x` (same length on all ranks), concatenated in rank order. */
  allGather(x: Float32Array): Float32Array;
}

/** Plain data to hand each rank (through workerData) so they attach to the same buffers. */
export interface SharedCollectiveInit {
  size: number;
  /** Floats per rank slot; larger arrays go through in pieces. */
  capacity: number;
  data: SharedArrayBuffer;
  control: SharedArrayBuffer;
}

export function createSharedCollective(size: number, capacity = 1 << 20): SharedCollectiveInit {
  return {
    size,
    capacity,
    data: new SharedArrayBuffer(size * capacity * 4),
    control: new SharedArrayBuffer(8),
  };
}

const COUNT = 0;
const GENERATION = 1;

export class SharedMemoryCollective implements Collective {
  readonly size: number;
  private readonly slots: Float32Array[];
  private readonly control: Int32Array;
  private readonly capacity: number;

  constructor(
    init: SharedCollectiveInit,
    readonly rank: number,
  ) {
    if (!(rank >= 0 && rank < init.size)) throw new Error(`rank ${rank} outside a group of ${init.size}`);
    this.size = init.size;
    this.capacity = init.capacity;
    this.slots = Array.from({ length: init.size }, (_, r) => new Float32Array(init.data, r * init.capacity * 4, init.capacity));
    this.control = new Int32Array(init.control);
  }

  /** Sense-reversing barrier: the last rank to arrive bumps the generation and wakes the rest. */
  private barrier(): void {
    const c = this.control;
    const gen = Atomics.load(c, GENERATION);
    if (Atomics.add(c, COUNT, 1) === this.size - 1) {
      Atomics.store(c, COUNT, 0);
      Atomics.add(c, GENERATION, 1);
      Atomics.notify(c, GENERATION);
    } else {
      while (Atomics.load(c, GENERATION) === gen) Atomics.wait(c, GENERATION, gen);
    }
  }

  allReduce(x: Float32Array): void {
    if (this.size === 1) return;
    for (let off = 0; off < x.length; off += this.capacity) {
      const n = Math.min(this.capacity, x.length - off);
      this.slots[this.rank].set(x.subarray(off, off + n));
      this.barrier();
      // Every rank sums in the same rank order, so all ranks get bit-identical results.
      for (let i = 0; i < n; i++) {
        let s = 0;
        for (let r = 0; r < this.size; r++) s += this.slots[r][i];
        x[off + i] = s;
      }
      this.barrier(); // nobody refills a slot before everyone has read it
    }
  }

  allGather(x: Float32Array): Float32Array {
    const out = new Float32Array(x.length * this.size);
    if (this.size === 1) {
      out.set(x);
      return out;
    }
    for (let off = 0; off < x.length; off += this.capacity) {
      const n = Math.min(this.capacity, x.length - off);
      this.slots[this.rank].set(x.subarray(off, off + n));
      this.barrier();
      for (let r = 0; r < this.size; r++) out.set(this.slots[r].subarray(0, n), r * x.length + off);
      this.barrier();
    }
    return out;
  }
}
