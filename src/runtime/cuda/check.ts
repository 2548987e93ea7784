// Helpers shared by the CUDA tests: bf16-exact random inputs and a NaN-aware relative error, so
// every test compares the GPU with the CPU backend the same way.

import assert from "node:assert/strict";
import type { HostTensor } from "../backend.js";
import { float32ToBf16 } from "../dtype.js";
import type { Rng } from "../../util/rng.js";
import { cudaDeviceCount } from "./backend.js";
import { ncclDescription } from "./nccl.js";

/** For the multi-GPU tests: the visible CUDA devices, or why the tests skip (fewer than 2, or no CUDA/NCCL). */
export function multiGpu(): { count: number; skip: string | false } {
  try {
    const count = cudaDeviceCount();
    if (count < 2) return { count, skip: `needs 2 CUDA devices, ${count} visible` };
    ncclDescription(); // NCCL must load too
    return { count, skip: false };
  } catch (e) {
    return { count: 0, skip: `no CUDA/NCCL (${(e as Error).message.split("\n")[0].replace(/; tried:$/, "")})` };
  }
}

/** Normal values rounded to bf16, so both backends start from identical inputs. */
export function randn(rng: Rng, n: number, scale = 1): Float32Array {
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    const u = Math.max(rng.next(), 1e-12);
    out[i] = scale * Math.sqrt(-2 * Math.log(u)) * Math.cos(2 * Math.PI * rng.next());
  }
  return new Float32Array(Uint32Array.from(float32ToBf16(out), (x) => x << 16).buffer);
}

/** A bf16 checkpoint-style tensor holding `data`. */
export function host(data: Float32Array, shape: number[]): HostTensor {
  return { dtype: "BF16", shape, data: new Uint8Array(float32ToBf16(data).buffer) };
}

/** ‖a − b‖ / ‖b‖, failing on any NaN or infinity (an unwritten, poisoned element). */
export function relErr(a: Float32Array, b: Float32Array, what: string): number {
  assert.equal(a.length, b.length, `${what}: length`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) assert.fail(`${what}: element ${i} is ${a[i]} (unwritten or overflow)`);
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return Math.sqrt(num / Math.max(den, 1e-30));
}

export function close(a: Float32Array, b: Float32Array, tol: number, what: string): void {
  const e = relErr(a, b, what);
  assert.ok(e < tol, `${what}: relative error ${e.toExponential(2)} ≥ ${tol}`);
}
