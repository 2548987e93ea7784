// The custom all-reduce for tensor parallelism's small messages (native/kernels/allreduce.cu):
// one kernel per call that reads every rank's staging buffer through peer memory, in place of
// NCCL's ~10–30 µs small-message latency. Ranks are threads of one process, one GPU each, so a
// device address of one rank is usable in another rank's kernels once peer access is on: no IPC.
//
// Setup (PeerAllReduce.connect, every rank at once, after its backend exists):
//   1. allocate this rank's staging buffer (two halves of `capacity` bytes; calls alternate),
//      signal buffer (zeroed: epochs and barrier flags) and inbox (zeroed: the pushed all-reduce
//      of batch-1 decode, native/kernels/peer_push.cuh) from the backend's memory, and post their
//      addresses with this rank's device in the shared PeerExchange;
//   2. once every rank has posted, enable peer access to every other rank's device and post a
//      verdict (ready, or unavailable);
//   3. once every rank has a verdict, the custom path is on only if all are ready. Every rank
//      decides from the same table, so all ranks take the same path for every call: a rank alone
//      on the custom path would wait for peers gone to NCCL.
// The PeerExchange is a SharedArrayBuffer made by engine/parallel.ts and handed to the rank
// threads in workerData; waiting on it polls with timers, so rank 0's thread stays free to hear
// that another rank failed.

import { type KernelArgs, type Kernels, threadsPer8 } from "./kernels.js";
import { ALIGN } from "./memory.js";
import type { DevicePtr, NativeCuda } from "./native.js";

/** allreduce.cu: AR_MAX_RANKS, AR_MAX_BLOCKS, the signal buffer's 16 + 32 × 8 words. */
export const PEER_AR_MAX_RANKS = 8;
const MAX_BLOCKS = 32;
const SIGNAL_BYTES = (16 + MAX_BLOCKS * PEER_AR_MAX_RANKS) * 8;
/** peer_push.cuh: PUSH_MAX_D, and the inbox of 2 halves × 8 sender slots × PUSH_MAX_D / 4 units of 16 bytes. */
const PUSH_MAX_D = 5120;
const INBOX_BYTES = 2 * PEER_AR_MAX_RANKS * (PUSH_MAX_D / 4) * 16;
const THREADS = 512;
const MIB = 2 ** 20;
const BYTES = { bf16: 2, f32: 4 } as const;
const DEFAULT_TIMEOUT_S = 30;
const SETUP_TIMEOUT_MS = 120_000;

/**
 * The largest message (bytes) the custom path takes with `ranks` ranks. One-shot reads
 * (ranks − 1) × the message over NVLink on every rank while NCCL's ring moves about twice the
 * message, so the default keeps those reads ≤ 4 MiB (~10 µs at ~350 GB/s, still below NCCL's
 * latency) and the message ≤ 1 MiB, which covers every captured decode batch of Scout
 * (64 × 5120 bf16 = 640 KiB). TSGLANG_CUSTOM_AR_MAX_BYTES overrides it; 0 turns the path off.
 */
export function peerAllReduceMaxBytes(ranks: number): number {
  const env = process.env.TSGLANG_CUSTOM_AR_MAX_BYTES;
  let bytes = Math.min(MIB, (4 * MIB) / Math.max(1, ranks - 1));
  if (env !== undefined && env !== "") {
    bytes = Number(env);
    if (!Number.isFinite(bytes) || bytes < 0) throw new Error(`TSGLANG_CUSTOM_AR_MAX_BYTES must be a byte count ≥ 0, got ${env}`);
  }
  return Math.floor(bytes / ALIGN) * ALIGN;
}

/** The bounded wait of a rank for its peers inside the kernel, then a trap with a message (TSGLANG_CUSTOM_AR_TIMEOUT_S, default 30). */
function timeoutNs(): number {
  const env = process.env.TSGLANG_CUSTOM_AR_TIMEOUT_S;
  const s = env !== undefined && env !== "" ? Number(env) : DEFAULT_TIMEOUT_S;
  if (!Number.isFinite(s) || s <= 0) throw new Error(`TSGLANG_CUSTOM_AR_TIMEOUT_S must be seconds > 0, got ${env}`);
  return Math.round(s * 1e9);
}

/** Shared by the rank threads of one tensor-parallel group (plain data: it crosses workerData). */
export interface PeerExchange {
  buffer: SharedArrayBuffer;
  ranks: number;
}

/** Per rank: posted (0/1), verdict (0 none, 1 ready, 2 unavailable); then [device, data, signal, capacity, inbox] as 64-bit words. */
const WORDS = 5;
const READY = 1;
const UNAVAILABLE = 2;

export function createPeerExchange(ranks: number): PeerExchange {
  return { buffer: new SharedArrayBuffer(headerBytes(ranks) + ranks * WORDS * 8), ranks };
}

function headerBytes(ranks: number): number {
  return Math.ceil((2 * ranks * 4) / 8) * 8;
}

function views(ex: PeerExchange): { posted: Int32Array; verdict: Int32Array; words: BigInt64Array } {
  const r = ex.ranks;
  return {
    posted: new Int32Array(ex.buffer, 0, r),
    verdict: new Int32Array(ex.buffer, 4 * r, r),
    words: new BigInt64Array(ex.buffer, headerBytes(r), r * WORDS),
  };
}

/** Resolves once every rank's entry of `state` is non-zero; throws naming the missing ranks after `ms`. */
async function waitAll(state: Int32Array, what: string, ms: number): Promise<void> {
  const start = performance.now();
  for (;;) {
    const missing = [...state.keys()].filter((k) => Atomics.load(state, k) === 0);
    if (missing.length === 0) return;
    if (performance.now() - start > ms) throw new Error(`custom all-reduce setup: rank(s) ${missing.join(", ")} did not ${what} within ${ms / 1000} s`);
    await new Promise((r) => setTimeout(r, 1));
  }
}

export interface PeerAllReduceHost {
  native: NativeCuda;
  kernels: Kernels;
  /** Persistent device memory of this rank's backend. */
  alloc(bytes: number, what: string): DevicePtr;
  release(ptr: DevicePtr): void;
}

export interface PeerGroup {
  rank: number;
  ranks: number;
  /** This rank's CUDA device ordinal. */
  device: number;
  exchange: PeerExchange;
}

export class PeerAllReduce {
  /** Custom all-reduces launched (or recorded into a CUDA graph) by this rank. */
  calls = 0;
  /** Of those, pushed ones (runPushedAddRmsNorm). */
  pushedCalls = 0;

  private constructor(
    private readonly host: PeerAllReduceHost,
    readonly rank: number,
    readonly ranks: number,
    /** Every rank's staging, signal and inbox buffers, in rank order (empty when off). */
    private readonly data: DevicePtr[],
    private readonly signal: DevicePtr[],
    private readonly inbox: DevicePtr[],
    /** The largest message in bytes (each staging half); 0 when off. */
    readonly maxBytes: number,
    /** "" when in use, else why every rank's all-reduces go to NCCL. */
    readonly off: string,
    private readonly timeoutNs: number,
  ) {}

  /** Sets up this rank's part; every rank of the group calls it concurrently (see the top of the file). */
  static async connect(host: PeerAllReduceHost, group: PeerGroup, setupTimeoutMs = SETUP_TIMEOUT_MS): Promise<PeerAllReduce> {
    const { rank, ranks, device, exchange } = group;
    if (exchange.ranks !== ranks || rank < 0 || rank >= ranks) throw new Error(`custom all-reduce: rank ${rank} of ${ranks} with an exchange for ${exchange.ranks}`);
    const { native } = host;
    const { posted, verdict, words } = views(exchange);
    const capacity = peerAllReduceMaxBytes(ranks);
    const wait = timeoutNs();
    let reason = "";
    if (ranks < 2 || ranks > PEER_AR_MAX_RANKS) reason = `${ranks} ranks (the kernel takes 2 to ${PEER_AR_MAX_RANKS})`;
    else if (capacity === 0) reason = "TSGLANG_CUSTOM_AR_MAX_BYTES=0";
    else if (!native.canAccessPeer || !native.enablePeerAccess) reason = "the CUDA addon has no peer-access calls (rebuild it)";
    let data = 0n;
    let signal = 0n;
    let inbox = 0n;
    if (!reason) {
      data = host.alloc(2 * capacity, "the custom all-reduce staging buffer");
      signal = host.alloc(SIGNAL_BYTES, "the custom all-reduce signals");
      inbox = host.alloc(INBOX_BYTES, "the pushed all-reduce inbox");
      native.memset(signal, 0, SIGNAL_BYTES / 4, 4);
      native.memset(inbox, 0, INBOX_BYTES / 4, 4);
      native.synchronize(); // zeroed before any peer can write a flag into them
    }
    const base = rank * WORDS;
    Atomics.store(words, base, BigInt(device));
    Atomics.store(words, base + 1, data);
    Atomics.store(words, base + 2, signal);
    Atomics.store(words, base + 3, BigInt(capacity));
    Atomics.store(words, base + 4, inbox);
    Atomics.store(posted, rank, 1);
    await waitAll(posted, "post their buffers", setupTimeoutMs);

    const entry = (k: number) => ({
      device: Number(Atomics.load(words, k * WORDS)),
      data: Atomics.load(words, k * WORDS + 1),
      signal: Atomics.load(words, k * WORDS + 2),
      capacity: Number(Atomics.load(words, k * WORDS + 3)),
      inbox: Atomics.load(words, k * WORDS + 4),
    });
    const all = Array.from({ length: ranks }, (_, k) => entry(k));
    if (!reason) {
      for (const [k, e] of all.entries()) {
        if (k === rank) continue;
        if (e.capacity !== capacity) reason = `rank ${k} staging ${e.capacity} bytes, rank ${rank} ${capacity}`;
        else if (e.device === device) reason = `ranks ${rank} and ${k} share GPU ${device}`;
        else if (!native.canAccessPeer!(e.device)) reason = `no peer access from GPU ${device} to GPU ${e.device}`;
        else {
          try {
            native.enablePeerAccess!(e.device);
          } catch (err) {
            reason = `enabling peer access from GPU ${device} to GPU ${e.device}: ${(err as Error).message}`;
          }
        }
        if (reason) break;
      }
    }
    Atomics.store(verdict, rank, reason ? UNAVAILABLE : READY);
    await waitAll(verdict, "enable peer access", setupTimeoutMs);

    if (!reason) {
      const others = [...verdict.keys()].filter((k) => Atomics.load(verdict, k) !== READY);
      if (others.length > 0) reason = `rank(s) ${others.join(", ")} could not use peer memory`;
    }
    if (reason) {
      if (data !== 0n) host.release(data);
      if (signal !== 0n) host.release(signal);
      if (inbox !== 0n) host.release(inbox);
      return new PeerAllReduce(host, rank, ranks, [], [], [], 0, reason, wait);
    }
    const column = (key: "data" | "signal" | "inbox") => all.map((e) => e[key]);
    return new PeerAllReduce(host, rank, ranks, column("data"), column("signal"), column("inbox"), capacity, "", wait);
  }

  /** Does a message of `bytes` take the custom path? The same answer on every rank of the group. */
  covers(bytes: number): boolean {
    return this.maxBytes > 0 && bytes > 0 && bytes <= this.maxBytes;
  }

  /** x[count] (in place) = the sum over ranks, bit-identical on every rank; on this thread's stream, capturable. */
  run(x: DevicePtr, count: number, dtype: "bf16" | "f32"): void {
    const bytes = count * BYTES[dtype];
    if (!this.covers(bytes)) throw new Error(`custom all-reduce: ${bytes} bytes is outside (0, ${this.maxBytes}]${this.off ? ` (off: ${this.off})` : ""}`);
    const units = Math.ceil(bytes / 16);
    this.launch(`allreduce_${dtype}`, x, count, Math.min(MAX_BLOCKS, Math.ceil(units / THREADS)));
  }

  /** Can runAddRmsNorm take `rows` rows of `d` bf16 (a block per row, a thread per 8 elements)? */
  coversRows(rows: number, d: number): boolean {
    return rows >= 1 && rows <= MAX_BLOCKS && d % 8 === 0 && d <= 8 * 1024 && this.covers(rows * d * 2);
  }

  /**
   * allreduce_add_rms_norm_bf16: x [rows, d] bf16 summed over ranks (as run() would store it),
   * then res += it (fp32, in place) and out = RMSNorm(res)·w — the layer's next norm in the
   * same launch. Every rank calls it where it would call run() (same sequence, same shapes).
   */
  runAddRmsNorm(x: DevicePtr, res: DevicePtr, w: DevicePtr, out: DevicePtr, rows: number, d: number, eps: number): void {
    if (!this.coversRows(rows, d)) throw new Error(`custom all-reduce: ${rows} rows of ${d} do not fit the fused add + RMSNorm`);
    this.launchWith("allreduce_add_rms_norm_bf16", rows, threadsPer8(d), (a) =>
      a.ptr(x).ptr(res).ptr(w).ptr(out).i32(d).f32(eps));
  }

  /**
   * Can a producer push one row of `d` bf16 (its blocks `rowsPerBlock` rows each) for
   * runPushedAddRmsNorm? Whole 4-row units per block, and a row the fused kernel takes.
   */
  canPush(d: number, rowsPerBlock: number): boolean {
    return this.coversRows(1, d) && d <= PUSH_MAX_D && rowsPerBlock % 4 === 0 && d % rowsPerBlock === 0;
  }

  /** The producer kernel's PushTarget argument (peer_push.cuh): every rank's inbox, this rank's signal buffer, rank, ranks. */
  pushTarget(a: KernelArgs): KernelArgs {
    if (this.maxBytes === 0) throw new Error(`pushed all-reduce: the custom all-reduce is off (${this.off})`);
    for (let k = 0; k < PEER_AR_MAX_RANKS; k++) a.ptr(this.inbox[k] ?? 0n);
    return a.ptr(this.signal[this.rank]).i32(this.rank).i32(this.ranks);
  }

  /**
   * allreduce_pushed_add_rms_norm_bf16: runAddRmsNorm for the one row whose parts every rank's
   * producer kernel (launched with pushTarget, the launch just before on each rank) pushed into
   * the inboxes, so nothing is staged or read across NVLink here. Same sums, same bits.
   */
  runPushedAddRmsNorm(res: DevicePtr, w: DevicePtr, out: DevicePtr, d: number, eps: number): void {
    if (!this.coversRows(1, d) || d > PUSH_MAX_D) throw new Error(`pushed all-reduce: a row of ${d} does not fit the fused add + RMSNorm`);
    this.host.kernels.launch("allreduce_pushed_add_rms_norm_bf16", [1], [threadsPer8(d)], (a) =>
      this.pushTarget(a).ptr(res).ptr(w).ptr(out).i32(d).f32(eps).u64(this.timeoutNs));
    if (!this.host.kernels.dry) {
      this.calls++;
      this.pushedCalls++;
    }
  }

  /**
   * A call of no elements: once it ends on this rank, every rank has reached it, so no peer still
   * reads this rank's staging buffer (their earlier calls are done) and it may be freed. Every
   * rank calls it (the backend's destroy), then it waits for this rank's stream.
   */
  barrier(): void {
    if (this.maxBytes === 0) return;
    this.launch("allreduce_f32", 0n, 0, 1);
    this.host.native.synchronize();
  }

  private launch(kernel: string, x: DevicePtr, count: number, blocks: number): void {
    this.launchWith(kernel, blocks, THREADS, (a) => a.ptr(x).u64(count));
  }

  /** A kernel taking the peers' buffers, then `args`, then (capacity, timeout, rank, ranks). */
  private launchWith(kernel: string, blocks: number, threads: number, args: (a: KernelArgs) => KernelArgs): void {
    this.host.kernels.launch(kernel, [blocks], [threads], (a) => {
      for (let k = 0; k < PEER_AR_MAX_RANKS; k++) a.ptr(this.data[k] ?? 0n);
      for (let k = 0; k < PEER_AR_MAX_RANKS; k++) a.ptr(this.signal[k] ?? 0n);
      return args(a).u64(this.maxBytes).u64(this.timeoutNs).i32(this.rank).i32(this.ranks);
    });
    if (!this.host.kernels.dry) this.calls++;
  }
}
