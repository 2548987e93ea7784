// NCCL between tensor-parallel ranks on GPUs: the addon's NCCL functions (native/src/nccl.cc),
// typed, and one communicator per rank. Ranks are threads of one process, one GPU each: rank 0
// makes the unique id (ncclUniqueId) and hands it to the other ranks' threads; every rank then
// joins on its own thread, bound to device `rank`. Collectives go on that thread's stream, so
// they order with the rank's kernels like any other op.

import { existsSync, readdirSync } from "node:fs";
import { homedir } from "node:os";
import { join } from "node:path";
import { type DeviceInfo, type DevicePtr, type NativeCuda, driverCandidates, loadNative } from "./native.js";

export interface NativeNccl {
  /** dlopens the first loadable libnccl of `paths` (process-wide, once). */
  ncclOpen(paths: string[]): { path: string; version: number };
  /** 128 bytes naming a new communicator (rank 0 makes it). */
  ncclGetUniqueId(): Uint8Array;
  /** Joins rank `rank` of `ranks` on this thread's device; blocks until every rank has joined. */
  ncclCommInitRank(ranks: number, id: Uint8Array, rank: number): DevicePtr;
  /** Sum over ranks of `count` elements, on this thread's stream (send === recv: in place). */
  ncclAllReduce(comm: DevicePtr, send: DevicePtr, recv: DevicePtr, count: number, dtype: number): void;
  /** recv = every rank's `sendCount` elements, in rank order, on this thread's stream. */
  ncclAllGather(comm: DevicePtr, send: DevicePtr, recv: DevicePtr, sendCount: number, dtype: number): void;
  ncclCommDestroy(comm: DevicePtr): void;
}

/** ncclDataType_t of the storage types. */
const NCCL_TYPE = { f32: 7, bf16: 9 } as const;

/** Where libnccl.so.2 may be: TSGLANG_NCCL, the loader's path, CUDA/system folders, Python's NCCL wheels. */
export function ncclCandidates(): string[] {
  const env = process.env.TSGLANG_NCCL;
  const name = "libnccl.so.2";
  const dirs = [process.env.CUDA_HOME, process.env.CUDA_PATH, "/usr/local/cuda"]
    .filter((d): d is string => !!d)
    .flatMap((d) => [join(d, "lib64"), join(d, "targets", "x86_64-linux", "lib")]);
  dirs.push("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/lib");
  // pip's nvidia-nccl-cu12/cu13 wheels (what PyTorch uses): <lib>/python3.X/{site,dist}-packages/nvidia/nccl/lib.
  const libRoots = [process.env.VIRTUAL_ENV, process.env.CONDA_PREFIX, "/usr/local", "/usr", "/opt/conda", join(homedir(), ".local")]
    .filter((d): d is string => !!d)
    .map((d) => join(d, "lib"));
  for (const opt of safeList("/opt")) libRoots.push(join("/opt", opt, ".venv", "lib"), join("/opt", opt, "lib"));
  for (const lib of libRoots) {
    for (const py of safeList(lib).filter((d) => d.startsWith("python3"))) {
      for (const pk of ["site-packages", "dist-packages"]) dirs.push(join(lib, py, pk, "nvidia", "nccl", "lib"));
    }
  }
  return [...(env ? [env] : []), name, ...dirs.map((d) => join(d, name)).filter((p) => existsSync(p))];
}

function safeList(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

let opened: { path: string; version: number } | null = null;

/** The addon with NCCL opened; a clear error when either is missing. */
export function loadNccl(): NativeCuda & NativeNccl {
  const n = loadNative() as NativeCuda & Partial<NativeNccl>;
  if (typeof n.ncclOpen !== "function") throw new Error("tsglang: the CUDA addon was built without NCCL support; rebuild it with `npm run build:native`");
  opened ??= n.ncclOpen(ncclCandidates());
  return n as NativeCuda & NativeNccl;
}

/** The NCCL library in use ("2.27.3 at /path"). */
export function ncclDescription(): string {
  loadNccl();
  const v = opened!.version;
  return `${Math.floor(v / 10000)}.${Math.floor(v / 100) % 100}.${v % 100} at ${opened!.path}`;
}

/** A new communicator's id, made by rank 0 (needs NCCL, not a device). */
export function ncclUniqueId(): Uint8Array {
  return loadNccl().ncclGetUniqueId();
}

/** Binds the calling thread to CUDA device `device` (its primary context and stream). */
export function bindCudaDevice(device: number): DeviceInfo {
  const n = loadNative();
  n.openDriver(driverCandidates());
  return n.init(device);
}

/** Plain data for a rank's thread (workerData): enough to join the communicator. */
export interface NcclInit {
  id: Uint8Array;
  rank: number;
  size: number;
}

/** One rank's communicator, on the calling thread's device. */
export class NcclCommunicator {
  readonly rank: number;
  readonly size: number;
  private readonly native: NativeCuda & NativeNccl;
  private comm: DevicePtr | null;

  /**
   * Binds this thread to `device` and joins the communicator: blocks until all `size` ranks
   * have joined, each from its own thread.
   */
  constructor(init: NcclInit, device: number) {
    if (!(init.rank >= 0 && init.rank < init.size)) throw new Error(`nccl: rank ${init.rank} outside a group of ${init.size}`);
    this.native = loadNccl();
    bindCudaDevice(device);
    this.rank = init.rank;
    this.size = init.size;
    this.comm = this.native.ncclCommInitRank(init.size, init.id, init.rank);
  }

  private handle(): DevicePtr {
    if (this.comm === null) throw new Error("nccl: the communicator was destroyed");
    return this.comm;
  }

  /** Sums `count` elements at `ptr` over all ranks, in place, on this thread's stream. */
  allReduce(ptr: DevicePtr, count: number, dtype: keyof typeof NCCL_TYPE): void {
    if (count > 0) this.native.ncclAllReduce(this.handle(), ptr, ptr, count, NCCL_TYPE[dtype]);
  }

  /** recv[size · count] = every rank's `count` elements at `send`, rank-major. */
  allGather(send: DevicePtr, recv: DevicePtr, count: number, dtype: keyof typeof NCCL_TYPE): void {
    if (count > 0) this.native.ncclAllGather(this.handle(), send, recv, count, NCCL_TYPE[dtype]);
  }

  /** Frees the communicator; every rank calls it (concurrently, from its own thread). */
  destroy(): void {
    if (this.comm === null) return;
    const c = this.comm;
    this.comm = null;
    this.native.synchronize();
    this.native.ncclCommDestroy(c);
  }
}
