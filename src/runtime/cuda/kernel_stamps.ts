// Where a captured decode step's device time goes, kernel by kernel, inside the replayed CUDA
// graph (TSGLANG_KERNEL_STAMPS=FILE; a profiling tool — it slows the step it measures). While a
// graph is captured, every kernel launch is followed by stamp_globaltimer (stamp.cu), which
// stores the global timer once its predecessor has ended; consecutive stamps of a replay then
// time each kernel in place, with the PDL overlaps and launch gaps of the real step, plus one
// stamp's own latency (reported as "(stamp alone)" to subtract). ncu times kernels one at a
// time, serialised, which is not what a graph replay does; nsys is not on the GPU machines.
// Work a graph holds that is not launched through Kernels (cuBLASLt GEMMs, NCCL) counts toward
// the next stamped kernel. At destroy, the backend of device 0 writes FILE: for the capture
// replayed last, each kernel name's µs per step and launches per step, largest first, and the
// stamped span.

import { writeFileSync } from "node:fs";
import type { DevicePtr, NativeCuda } from "./native.js";

const SLOTS = 8192; // stamps per capture region
const REGIONS = 16; // captures kept (later ones reuse the first regions)

type Launch = (name: string, out: DevicePtr) => void;

export class KernelStamps {
  private readonly buf: DevicePtr;
  private readonly names: string[][] = [];
  private region = -1;
  private count = 0;

  constructor(private readonly native: NativeCuda, private readonly file: string) {
    this.buf = native.memAlloc(SLOTS * REGIONS * 8);
    native.memset(this.buf, 0, SLOTS * REGIONS * 2, 4);
  }

  /** A capture starts: a new region, opened by a first stamp. */
  begin(launch: Launch): void {
    this.region = (this.region + 1) % REGIONS;
    this.names[this.region] = [];
    this.count = 0;
    this.stamp(launch, "(capture start)");
  }

  /** After kernel `name` was launched into the capture. */
  after(launch: Launch, name: string): void {
    if (this.region >= 0 && this.count < SLOTS - 1) this.stamp(launch, name);
  }

  /** The capture ends: one more stamp straight after the last, to measure a stamp alone. */
  end(launch: Launch): void {
    this.stamp(launch, "(stamp alone)");
  }

  private stamp(launch: Launch, name: string): void {
    this.names[this.region].push(name);
    launch("stamp_globaltimer", this.buf + BigInt((this.region * SLOTS + this.count) * 8));
    this.count++;
  }

  /** Writes the latest-replayed capture's per-kernel times to the file. */
  dump(device: string): void {
    const all = new BigUint64Array(SLOTS * REGIONS);
    this.native.dtoh(all, this.buf);
    this.native.memFree(this.buf);
    let best = -1;
    let bestEnd = 0n;
    for (const [r, names] of this.names.entries()) {
      if (!names || names.length < 2) continue;
      const last = all[r * SLOTS + names.length - 1];
      if (last > bestEnd && all[r * SLOTS] > 0n) [best, bestEnd] = [r, last];
    }
    if (best < 0) {
      writeFileSync(this.file, JSON.stringify({ device, error: "no replayed capture was stamped" }) + "\n");
      return;
    }
    const names = this.names[best];
    const t = all.subarray(best * SLOTS, best * SLOTS + names.length);
    const byName = new Map<string, { us: number; launches: number }>();
    for (let i = 1; i < names.length; i++) {
      const e = byName.get(names[i]) ?? { us: 0, launches: 0 };
      e.us += Number(t[i] - t[i - 1]) / 1000;
      e.launches++;
      byName.set(names[i], e);
    }
    const kernels = [...byName].map(([name, e]) => ({ name, us: +e.us.toFixed(2), launches: e.launches, us_each: +(e.us / e.launches).toFixed(2) })).sort((a, b) => b.us - a.us);
    const span = Number(t[names.length - 1] - t[0]) / 1000;
    writeFileSync(this.file, JSON.stringify({ device, captures: this.names.filter(Boolean).length, stamps: names.length, span_us: +span.toFixed(1), kernels }) + "\n");
  }
}
