// Kernel modules and launches. Each build/kernels/<file>.fatbin is one module; kernels are found
// by their extern "C" name. Parameters are packed into one buffer in C layout (natural
// alignment) and passed whole to cuLaunchKernel, so a launch is one native call.

import { KernelStamps } from "./kernel_stamps.js";
import { type DevicePtr, type NativeCuda, kernelImages } from "./native.js";

/** Threads for a row kernel with one thread per 8 elements of a row of d (bf16 16-byte lanes): whole warps, ≤ 1024. */
export function threadsPer8(d: number): number {
  return Math.max(32, Math.min(1024, Math.ceil(d / 8 / 32) * 32));
}

/** Packs kernel parameters in declaration order with C alignment. */
export class KernelArgs {
  private readonly buf = new ArrayBuffer(512);
  private readonly view = new DataView(this.buf);
  private readonly bytes = new Uint8Array(this.buf);
  private off = 0;

  reset(): this {
    this.off = 0;
    return this;
  }

  private align(n: number): number {
    this.off = Math.ceil(this.off / n) * n;
    const at = this.off;
    this.off += n;
    if (this.off > this.buf.byteLength) throw new Error("kernel parameter block overflow");
    return at;
  }

  ptr(p: DevicePtr): this {
    this.view.setBigUint64(this.align(8), p, true);
    return this;
  }

  i32(v: number): this {
    if (!Number.isInteger(v) || v < -(2 ** 31) || v >= 2 ** 31) throw new Error(`kernel int argument ${v} is not an int32`);
    this.view.setInt32(this.align(4), v, true);
    return this;
  }

  u32(v: number): this {
    if (!Number.isInteger(v) || v < 0 || v >= 2 ** 32) throw new Error(`kernel uint argument ${v} is not a uint32`);
    this.view.setUint32(this.align(4), v, true);
    return this;
  }

  /** size_t */
  u64(v: number): this {
    this.view.setBigUint64(this.align(8), BigInt(v), true);
    return this;
  }

  f32(v: number): this {
    this.view.setFloat32(this.align(4), v, true);
    return this;
  }

  packed(): Uint8Array {
    return this.bytes.subarray(0, this.off);
  }
}

export type Dim3 = [number, number?, number?];

export class Kernels {
  private readonly modules: { name: string; handle: DevicePtr }[];
  private readonly fns = new Map<string, DevicePtr>();
  private readonly args = new KernelArgs();
  /** TSGLANG_CUDA_SYNC=1: wait after every launch so a fault names its kernel. */
  private readonly syncEach = process.env.TSGLANG_CUDA_SYNC === "1";
  /**
   * Programmatic dependent launch (on by default; TSGLANG_PDL=0 for A/B timing): each kernel may
   * get resident while its predecessor runs, overlapping the launch gap between the small kernels
   * of a decode step. Safe because every kernel in native/kernels waits for its predecessor before
   * touching memory (pdl_contract.test.ts). cuBLASLt and NCCL launch ordinarily, and an ordinary
   * launch after a PDL one, or a PDL one after an ordinary one, is fully ordered.
   */
  private readonly pdl = process.env.TSGLANG_PDL !== "0";
  /** The stream is being captured into a CUDA graph: no per-launch synchronisation (setCapturing). */
  private capturing = false;
  /** Launches are skipped (the host side of ops runs alone: CUDA-graph step preparation). */
  dry = false;
  /** TSGLANG_KERNEL_STAMPS=FILE: a timeline of captured graphs (kernel_stamps.ts). */
  readonly stamps: KernelStamps | null;
  private readonly stampLaunch = (name: string, out: DevicePtr) =>
    this.native.launch(this.fn(name), 1, 1, 1, 1, 1, 1, 0, this.args.reset().ptr(out).packed(), this.pdl);

  constructor(private readonly native: NativeCuda) {
    this.modules = kernelImages().map((m) => ({ name: m.name, handle: native.moduleLoad(m.image) }));
    const file = process.env.TSGLANG_KERNEL_STAMPS;
    this.stamps = file ? new KernelStamps(native, file) : null;
  }

  /** A CUDA-graph capture starts or ends on this stream. */
  setCapturing(on: boolean): void {
    if (this.stamps && on !== this.capturing) {
      if (on) this.stamps.begin(this.stampLaunch);
      else this.stamps.end(this.stampLaunch);
    }
    this.capturing = on;
  }

  /**
   * The kernel's handle, looked up once. Modules are probed in turn, so the driver reports
   * "named symbol not found" for the others: compute-sanitizer runs pass --report-api-errors no.
   */
  fn(name: string): DevicePtr {
    let f = this.fns.get(name);
    if (f !== undefined) return f;
    for (const m of this.modules) {
      try {
        f = this.native.getFunction(m.handle, name);
        break;
      } catch {
        // not in this module
      }
    }
    if (f === undefined) throw new Error(`tsglang: kernel ${name} is in none of the modules ${this.modules.map((m) => m.name).join(", ")}; rebuild with \`npm run build:native\``);
    this.fns.set(name, f);
    return f;
  }

  launch(name: string, grid: Dim3, block: Dim3, fill: (a: KernelArgs) => KernelArgs, sharedBytes = 0): void {
    const gx = grid[0], gy = grid[1] ?? 1, gz = grid[2] ?? 1;
    if (gx * gy * gz === 0 || this.dry) return; // nothing to do (empty batch, or a dry run)
    const params = fill(this.args.reset()).packed();
    this.native.launch(this.fn(name), gx, gy, gz, block[0], block[1] ?? 1, block[2] ?? 1, sharedBytes, params, this.pdl);
    if (this.stamps && this.capturing) this.stamps.after(this.stampLaunch, name);
    if (this.syncEach && !this.capturing) {
      try {
        this.native.synchronize();
      } catch (e) {
        throw new Error(`kernel ${name} failed: ${(e as Error).message}`);
      }
    }
  }
}
