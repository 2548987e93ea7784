// The whole native interface in one file: the addon's functions, typed, and how to find the
// addon, the CUDA libraries and the kernel images. Policy (memory, kernels, batching) stays in
// TypeScript; the addon is a thin layer over the driver API and cuBLASLt (native/src/addon.cc).

import { existsSync, readdirSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { join } from "node:path";
import { packageRoot } from "../../util/repo.js";
import type { GemmStats } from "../backend.js";

/** A device address or driver handle (CUdeviceptr, CUmodule, CUfunction, CUevent). */
export type DevicePtr = bigint;

export interface DeviceInfo {
  name: string;
  ccMajor: number;
  ccMinor: number;
  smCount: number;
  l2Bytes: number;
  maxSharedPerBlock: number;
  totalBytes: number;
  driverVersion: number;
}

/** cudaDataType values for matmul. */
export const CUDA_R_32F = 0;
export const CUDA_R_16BF = 14;

export interface NativeCuda {
  /** dlopens the first loadable libcuda of `paths`; returns the one used. */
  openDriver(paths: string[]): string;
  /** cuInit and the number of visible CUDA devices (0 when there are none). */
  deviceCount(): number;
  /** cuInit, the device's primary context and one non-blocking stream (idempotent). */
  init(ordinal: number): DeviceInfo;
  /** dlopens cuBLASLt and creates its handle (after init). */
  openBlasLt(paths: string[]): { path: string; version: number };
  memGetInfo(): { free: number; total: number };
  memAlloc(bytes: number): DevicePtr;
  memFree(ptr: DevicePtr): void;
  /** Host → device, queued on the current stream (as every asynchronous call below); the source may be reused on return. */
  htod(dst: DevicePtr, src: ArrayBufferView): void;
  /** Device → host; waits for the stream (and so reports earlier asynchronous faults). */
  dtoh(dst: ArrayBufferView, src: DevicePtr): void;
  dtod(dst: DevicePtr, src: DevicePtr, bytes: number): void;
  /** Fills `count` elements of `elementBytes` (1, 2 or 4) with `value`, on the stream. */
  memset(dst: DevicePtr, value: number, count: number, elementBytes: 1 | 2 | 4): void;
  synchronize(): void;
  moduleLoad(image: Uint8Array): DevicePtr;
  getFunction(module: DevicePtr, name: string): DevicePtr;
  setMaxDynamicShared(fn: DevicePtr, bytes: number): void;
  /**
   * Launches `fn` on the stream with a parameter block packed in C layout (see KernelArgs).
   * pdl: programmatic dependent launch — the kernel may start before the previous one ends and
   * must wait for it (griddepcontrol.wait) first; the addon honours it on sm_90 only.
   */
  launch(fn: DevicePtr, gx: number, gy: number, gz: number, bx: number, by: number, bz: number, sharedBytes: number, params: Uint8Array, pdl: boolean): void;
  /**
   * Column-major D[m, n] = alpha·op(A)[m, k]·op(B)[k, n] + beta·D through cuBLASLt, fp32 compute.
   * trans: 0 = N, 1 = T. Returns false when cuBLASLt has no algorithm for the shape.
   */
  matmul(
    transA: number, transB: number, m: number, n: number, k: number,
    a: DevicePtr, lda: number, b: DevicePtr, ldb: number, d: DevicePtr, ldd: number,
    typeAB: number, typeD: number, alpha: number, beta: number, workspace: DevicePtr, workspaceBytes: number,
  ): boolean;
  /** matmul's planning for these arguments (descriptors, the bucket's algorithm) without running it. */
  matmulPlan(
    transA: number, transB: number, m: number, n: number, k: number,
    a: DevicePtr, lda: number, b: DevicePtr, ldb: number, d: DevicePtr, ldd: number,
    typeAB: number, typeD: number, alpha: number, beta: number, workspace: DevicePtr, workspaceBytes: number,
  ): boolean;
  /**
   * The token count whose planned algorithm matmul uses for `n` columns (blaslt.cc's buckets:
   * exact to 16, then four per octave); matmul plans each bucket once.
   */
  matmulBucket(n: number): number;
  /** This thread's cuBLASLt planning so far: plans made, algorithm choices timed on the GPU, choices for an exact n. */
  matmulStats(): GemmStats;
  eventCreate(): DevicePtr;
  /** Records `ev` on the current stream. */
  eventRecord(ev: DevicePtr): void;
  /**
   * Everything queued from now on goes on the thread's side stream (on: true; created on first
   * use) or back on its main stream. The two may overlap on the GPU: order them with events.
   * synchronize() waits for both.
   */
  useSideStream(on: boolean): void;
  /** Work queued on the current stream from now on waits for `ev` (recorded on either stream). */
  streamWaitEvent(ev: DevicePtr): void;
  /**
   * Download that waits only for `ev` (recorded on the stream): what was queued after it keeps
   * running on the GPU while the host has the bytes.
   */
  dtohAfter(dst: ArrayBufferView, src: DevicePtr, ev: DevicePtr): void;
  /** Milliseconds between two recorded events; waits for `end`. */
  eventElapsed(start: DevicePtr, end: DevicePtr): number;
  /** CUDA graphs: record (not run) everything queued on the stream until graphEndCapture. */
  graphBeginCapture?(): void;
  /** Ends the capture (the stream runs work again) and returns the executable graph; throws if the capture broke. */
  graphEndCapture?(): DevicePtr;
  /** Replays an executable graph on the stream. */
  graphLaunch?(exec: DevicePtr): void;
  graphDestroy?(exec: DevicePtr): void;
  /** Page-locks the memory under `view` (keep its buffer alive until hostUnregister): fast dtoh into it. */
  hostRegister?(view: ArrayBufferView): void;
  hostUnregister?(view: ArrayBufferView): void;
  /** Can this thread's device address device `ordinal`'s memory (peer access over NVLink/PCIe)? */
  canAccessPeer?(ordinal: number): boolean;
  /** This thread's kernels may then address every allocation of device `ordinal`'s primary context (idempotent). */
  enablePeerAccess?(ordinal: number): void;
}

export function addonPath(): string {
  return process.env.TSGLANG_ADDON ?? join(packageRoot(), "build", "tsglang.node");
}

export function kernelDir(): string {
  return process.env.TSGLANG_KERNELS ?? join(packageRoot(), "build", "kernels");
}

let cached: NativeCuda | null = null;

/** Loads the addon (it loads without CUDA; CUDA libraries are opened by openDriver/openBlasLt). */
export function loadNative(): NativeCuda {
  if (cached) return cached;
  const path = addonPath();
  if (!existsSync(path)) {
    throw new Error(`tsglang: the CUDA addon is not built (${path} is missing); run \`npm run build:native\` (needs g++, and nvcc for the kernels)`);
  }
  const require = createRequire(import.meta.url);
  cached = require(path) as NativeCuda;
  return cached;
}

/** Where libcuda.so.1 may be: the loader's search path first, then the usual driver folders. */
export function driverCandidates(): string[] {
  const env = process.env.TSGLANG_LIBCUDA;
  return [
    ...(env ? [env] : []),
    "libcuda.so.1",
    "/usr/local/nvidia/lib64/libcuda.so.1",
    "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
    "/usr/lib64/libcuda.so.1",
    "/usr/lib/wsl/lib/libcuda.so.1",
  ];
}

/** Where cuBLASLt may be: TSGLANG_CUBLASLT, the loader's search path, then CUDA toolkit folders. */
export function blasLtCandidates(): string[] {
  const names = ["libcublasLt.so.13", "libcublasLt.so.12"];
  const dirs = [process.env.CUDA_HOME, process.env.CUDA_PATH, "/usr/local/cuda"]
    .filter((d): d is string => !!d)
    .flatMap((d) => [join(d, "lib64"), join(d, "targets", "x86_64-linux", "lib")]);
  const env = process.env.TSGLANG_CUBLASLT;
  return [...(env ? [env] : []), ...names, ...dirs.flatMap((d) => names.map((n) => join(d, n)))];
}

/** The compiled kernel images, one per native/kernels/*.cu. */
export function kernelImages(): { name: string; image: Uint8Array }[] {
  const dir = kernelDir();
  if (!existsSync(dir)) {
    throw new Error(`tsglang: no CUDA kernels in ${dir}; run \`npm run build:native\` on a machine with nvcc`);
  }
  const files = readdirSync(dir).filter((f) => f.endsWith(".fatbin")).sort();
  if (files.length === 0) throw new Error(`tsglang: no .fatbin files in ${dir}; run \`npm run build:native\` with nvcc`);
  return files.map((f) => ({ name: f.replace(/\.fatbin$/, ""), image: new Uint8Array(readFileSync(join(dir, f))) }));
}

export type CudaProbe = { ok: true; info: DeviceInfo } | { ok: false; reason: string };

/** Is there a usable CUDA device (addon built, driver loads, a device answers)? Never throws. */
export function probeCuda(ordinal = 0): CudaProbe {
  try {
    const n = loadNative();
    n.openDriver(driverCandidates());
    return { ok: true, info: n.init(ordinal) };
  } catch (e) {
    return { ok: false, reason: (e as Error).message };
  }
}
