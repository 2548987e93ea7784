// The kernel-stamp timeline's bookkeeping (kernel_stamps.ts) against a fake device: stamps go to
// one region per capture, the capture replayed last is the one reported, each kernel gets the
// time from the stamp before it, and a capture whose stamps never ran is skipped. The stamp
// kernel itself runs in the CUDA suites' bench runs (TSGLANG_KERNEL_STAMPS).

import assert from "node:assert/strict";
import { mkdtempSync, readFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { KernelStamps } from "./kernel_stamps.js";
import type { DevicePtr, NativeCuda } from "./native.js";

test("kernel stamps: the last-replayed capture, µs per kernel name from consecutive stamps", () => {
  const base = 1n << 30n;
  let device = new BigUint64Array(0);
  const native = {
    memAlloc: (bytes: number) => ((device = new BigUint64Array(bytes / 8)), base),
    memset: () => {},
    memFree: () => {},
    dtoh: (dst: BigUint64Array) => dst.set(device),
  } as unknown as NativeCuda;
  const file = join(mkdtempSync(join(tmpdir(), "stamps-")), "t.json");
  const stamps = new KernelStamps(native, file);
  const slots: number[] = [];
  const launch = (name: string, out: DevicePtr) => {
    assert.equal(name, "stamp_globaltimer");
    slots.push(Number(out - base) / 8);
  };
  // Capture 1: a, b, a. Capture 2: c (its stamps never ran: it was not replayed).
  stamps.begin(launch);
  for (const k of ["a", "b", "a"]) stamps.after(launch, k);
  stamps.end(launch);
  const first = slots.slice();
  stamps.begin(launch);
  stamps.after(launch, "c");
  stamps.end(launch);
  assert.deepEqual(first, [0, 1, 2, 3, 4]);
  assert.ok(slots[5] >= 8192, "the second capture's stamps are in their own region");
  // The replay of capture 1: start, a +3 µs, b +10 µs, a +5 µs, the extra stamp +0.5 µs.
  const t0 = 1_000_000n;
  [0n, 3000n, 13000n, 18000n, 18500n].forEach((dt, i) => (device[first[i]] = t0 + dt));
  stamps.dump("test GPU");
  const r = JSON.parse(readFileSync(file, "utf8"));
  assert.equal(r.device, "test GPU");
  assert.equal(r.captures, 2);
  assert.equal(r.stamps, 5);
  assert.equal(r.span_us, 18.5);
  assert.deepEqual(r.kernels, [
    { name: "b", us: 10, launches: 1, us_each: 10 },
    { name: "a", us: 8, launches: 2, us_each: 4 },
    { name: "(stamp alone)", us: 0.5, launches: 1, us_each: 0.5 },
  ]);
});
