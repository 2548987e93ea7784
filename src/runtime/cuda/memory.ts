// The device allocator: one cuMemAlloc of the whole budget up front, then sub-allocation.
//   persistent  first-fit free list (weights, KV pools, workspaces), freed explicitly
//   step        bump regions for one forward step's activations:
//                 base     what lives for the whole step (the residual stream, batch metadata)
//                 A and B  per-layer activations, alternating: each new layer resets the region
//                          the layer before last used, so a step needs two layers' worth of
//                          activations, not one per layer (a 48-layer prefill would not fit)
// So the steady state makes no driver allocation at all (and CUDA graphs can capture steps).
// Every step allocation is stamped with its region's epoch: using one after its region was
// reset is a clear error, never silently recycled memory.

import type { DevicePtr, NativeCuda } from "./native.js";

/** Every block starts on a 256-byte boundary: what cuBLASLt and 16-byte vector loads want. */
export const ALIGN = 256;

function alignUp(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}

function mib(n: number): string {
  return `${(n / 2 ** 20).toFixed(1)} MiB`;
}

interface Block {
  offset: number;
  size: number;
}

export class DeviceMemory {
  readonly base: DevicePtr;
  private readonly persistentBytes: number;
  private free: Block[]; // sorted by offset, coalesced
  private readonly used = new Map<number, number>(); // offset → size
  /** Step regions: 0 = base, 1 and 2 = the alternating layer regions. */
  private readonly regionStart: number[];
  private readonly regionSize: number[];
  private readonly regionTop = [0, 0, 0];
  private readonly regionPeak = [0, 0, 0];
  private readonly regionEpoch = [0, 0, 0];
  private current = 1;

  readonly totalBytes: number;
  readonly stepBytes: number;

  constructor(
    private readonly native: NativeCuda,
    totalBytes: number,
    stepBytes: number,
  ) {
    this.totalBytes = alignUp(totalBytes);
    this.stepBytes = alignUp(stepBytes);
    if (this.stepBytes >= this.totalBytes) {
      throw new Error(`cuda memory: the step arena (${mib(this.stepBytes)}) must be smaller than the budget (${mib(this.totalBytes)})`);
    }
    this.base = native.memAlloc(this.totalBytes);
    this.persistentBytes = this.totalBytes - this.stepBytes;
    this.free = [{ offset: 0, size: this.persistentBytes }];
    // base: 1/8 of the step arena; each layer region 7/16.
    const baseSize = alignUp(Math.floor(this.stepBytes / 8));
    const layerSize = Math.floor((this.stepBytes - baseSize) / 2 / ALIGN) * ALIGN;
    this.regionStart = [this.persistentBytes, this.persistentBytes + baseSize, this.persistentBytes + baseSize + layerSize];
    this.regionSize = [baseSize, layerSize, layerSize];
  }

  /** A persistent block (weights, KV); throws with the numbers when the budget is exhausted. */
  alloc(bytes: number, what: string): DevicePtr {
    const size = alignUp(Math.max(bytes, 1));
    const i = this.free.findIndex((b) => b.size >= size);
    if (i < 0) {
      throw new Error(`cuda memory: cannot allocate ${mib(size)} for ${what}: ${mib(this.persistentInUse())} of ${mib(this.persistentBytes)} persistent memory in use (largest free block ${mib(this.largestFree())}); raise memoryBytes`);
    }
    const b = this.free[i];
    const offset = b.offset;
    if (b.size === size) this.free.splice(i, 1);
    else this.free[i] = { offset: b.offset + size, size: b.size - size };
    this.used.set(offset, size);
    return this.base + BigInt(offset);
  }

  release(ptr: DevicePtr): void {
    const offset = Number(ptr - this.base);
    const size = this.used.get(offset);
    if (size === undefined) throw new Error(`cuda memory: free of an unknown block at offset ${offset}`);
    this.used.delete(offset);
    let i = this.free.findIndex((b) => b.offset > offset);
    if (i < 0) i = this.free.length;
    this.free.splice(i, 0, { offset, size });
    // Coalesce with the next, then the previous neighbour.
    const next = this.free[i + 1];
    if (next && offset + size === next.offset) {
      this.free[i].size += next.size;
      this.free.splice(i + 1, 1);
    }
    const prev = this.free[i - 1];
    if (prev && prev.offset + prev.size === offset) {
      prev.size += this.free[i].size;
      this.free.splice(i, 1);
    }
  }

  /**
   * Activation memory: in the base region (valid for the whole step) or the current layer
   * region (valid until the layer after next begins). Returns the address and the stamp.
   */
  stepAlloc(bytes: number, base = false): { ptr: DevicePtr; region: number; epoch: number } {
    const r = base ? 0 : this.current;
    const size = alignUp(Math.max(bytes, 1));
    if (this.regionTop[r] + size > this.regionSize[r]) {
      const name = r === 0 ? "base (step-long) region" : "per-layer activation region";
      throw new Error(`cuda memory: the ${name} of ${mib(this.regionSize[r])} is full (${mib(this.regionTop[r])} used, ${mib(size)} more asked); raise stepBytes or take fewer tokens per step`);
    }
    const ptr = this.base + BigInt(this.regionStart[r] + this.regionTop[r]);
    this.regionTop[r] += size;
    this.regionPeak[r] = Math.max(this.regionPeak[r], this.regionTop[r]);
    return { ptr, region: r, epoch: this.regionEpoch[r] };
  }

  /** The byte offset of [ptr, ptr + bytes) in the base (step-long) region, or −1 when it is not inside it. */
  baseOffset(ptr: DevicePtr, bytes: number): number {
    const off = Number(ptr - this.base) - this.regionStart[0];
    return off >= 0 && off + bytes <= this.regionSize[0] ? off : -1;
  }

  /** The base region's address. */
  get baseStart(): DevicePtr {
    return this.base + BigInt(this.regionStart[0]);
  }

  /** The size of each per-layer region: the most one layer's activations (or a warm-up's scratch) can take. */
  get layerRegionBytes(): number {
    return this.regionSize[1];
  }

  /** Is a step allocation stamped (region, epoch) still valid? */
  live(region: number, epoch: number): boolean {
    return this.regionEpoch[region] === epoch;
  }

  /** The allocation state (each region's top, the current layer region): what a replayed CUDA graph left. */
  mark(): number[] {
    return [...this.regionTop, this.current];
  }

  /** Resumes from mark(): later allocations go after what the graph's step used (epochs stay). */
  restore(m: readonly number[]): void {
    for (let r = 0; r < 3; r++) {
      this.regionTop[r] = m[r];
      this.regionPeak[r] = Math.max(this.regionPeak[r], m[r]);
    }
    this.current = m[3];
  }

  /** A new step: every region is reset. */
  resetStep(): void {
    for (let r = 0; r < 3; r++) this.resetRegion(r);
    this.current = 1;
  }

  /** A new layer: switch to the other layer region and reset it (it held the layer before last). */
  nextLayer(poison: boolean): void {
    this.current = 3 - this.current;
    this.resetRegion(this.current);
    if (poison) this.poisonRegion(this.current);
  }

  private resetRegion(r: number): void {
    this.regionTop[r] = 0;
    this.regionEpoch[r]++;
  }

  private poisonRegion(r: number): void {
    this.native.memset(this.base + BigInt(this.regionStart[r]), 0xff, this.regionSize[r], 1);
  }

  /** Fills the whole step arena with 0xFF bytes (NaN in bf16 and fp32): tests prove every output element gets written. */
  poisonStep(): void {
    this.native.memset(this.base + BigInt(this.persistentBytes), 0xff, this.stepBytes, 1);
  }

  /** The largest persistent block that could be allocated now. */
  largestFree(): number {
    return Math.max(0, ...this.free.map((b) => b.size));
  }

  persistentInUse(): number {
    let s = 0;
    for (const v of this.used.values()) s += v;
    return s;
  }

  stats(): { totalBytes: number; persistentBytes: number; persistentInUse: number; stepBytes: number; basePeak: number; layerPeak: number } {
    return {
      totalBytes: this.totalBytes,
      persistentBytes: this.persistentBytes,
      persistentInUse: this.persistentInUse(),
      stepBytes: this.stepBytes,
      basePeak: this.regionPeak[0],
      layerPeak: Math.max(this.regionPeak[1], this.regionPeak[2]),
    };
  }

  destroy(): void {
    this.native.memFree(this.base);
  }
}
