// Free-list allocator of KV-cache slots. The KV tensors live in the backend; a slot is a row
// index into them. The engine keeps one pool per KV kind: `full` (global layers) and, with the
// hybrid cache, `swa` (chunked-local layers).

export class TokenPool {
  /** Free slots as a stack; the top is freeStack[top - 1]. */
  private readonly freeStack: Int32Array;
  private top = 0;
  /** 1 where the slot is free, so a double free is caught in O(1). */
  private readonly freeMap: Uint8Array;

  constructor(readonly size: number) {
    if (!Number.isInteger(size) || size < 0) {
      throw new RangeError(`TokenPool size must be a non-negative integer, got ${size}`);
    }
    this.freeStack = new Int32Array(size);
    this.freeMap = new Uint8Array(size);
    this.reset();
  }

  get available(): number {
    return this.top;
  }

  get used(): number {
    return this.size - this.top;
  }

  isFree(slot: number): boolean {
    if (!this.inRange(slot)) throw new RangeError(`slot ${slot} out of range [0, ${this.size})`);
    return this.freeMap[slot] === 1;
  }

  /** n distinct free slots, or null (nothing taken) when fewer than n are free. */
  alloc(n: number): Int32Array | null {
    if (!Number.isInteger(n) || n < 0) throw new RangeError(`alloc needs a non-negative integer, got ${n}`);
    if (n > this.top) return null;
    const out = new Int32Array(n);
    for (let i = 0; i < n; i++) {
      const slot = this.freeStack[--this.top];
      this.freeMap[slot] = 0;
      out[i] = slot;
    }
    return out;
  }

  /** Returns slots to the pool; -1 entries (absent slots) are skipped. All or nothing: on error nothing is freed. */
  free(slots: ArrayLike<number>): void {
    const start = this.top;
    for (let i = 0; i < slots.length; i++) {
      const slot = slots[i];
      if (slot === -1) continue;
      if (!this.inRange(slot) || this.freeMap[slot] === 1) {
        this.undoFreesSince(start);
        throw new RangeError(this.inRange(slot) ? `double free of slot ${slot}` : `slot ${slot} out of range [0, ${this.size})`);
      }
      this.freeMap[slot] = 1;
      this.freeStack[this.top++] = slot;
    }
  }

  /** Marks every slot free; the first allocations then hand out 0, 1, 2, ... */
  reset(): void {
    for (let i = 0; i < this.size; i++) this.freeStack[i] = this.size - 1 - i;
    this.top = this.size;
    this.freeMap.fill(1);
  }

  private inRange(slot: number): boolean {
    return Number.isInteger(slot) && slot >= 0 && slot < this.size;
  }

  private undoFreesSince(start: number): void {
    while (this.top > start) this.freeMap[this.freeStack[--this.top]] = 0;
  }
}
