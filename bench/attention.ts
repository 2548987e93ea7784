// The fa3 attention kernels on the GPU, run by bench/attention.sh after bench/attention_torch.py:
//   prefill: causal GQA 40/8, head_dim 128, 8k tokens (torch's inputs, output checked against
//            torch SDPA flash), the same through shuffled slots, chunked-local (chunk 8192 over
//            16k tokens), prefill of 1k tokens over a 7k cached prefix; TFLOP/s next to torch
//            SDPA flash and cuDNN timed in the same run;
//   decode:  one query row per sequence, batch × context, split-KV, checked against the
//            reference kernel (attention.cu) on the same inputs; GB/s of K/V (+ q/out) next
//            to the device-to-device copy bandwidth measured here.
// Times are CUDA-event medians after warm-up. Usage (repo root, dist/ and build/ built):
//   node dist/bench/attention.js --io /tmp/attn_io --torch OUT/torch.json --json OUT/attention.json

import { existsSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { type FaSeq, FlashAttention, type PrefillVariant } from "../src/runtime/cuda/attention.js";
import { Kernels } from "../src/runtime/cuda/kernels.js";
import { type DevicePtr, driverCandidates, loadNative } from "../src/runtime/cuda/native.js";
import { bf16ToFloat32 } from "../src/runtime/dtype.js";

const { values: args } = parseArgs({
  options: { io: { type: "string" }, torch: { type: "string" }, json: { type: "string" }, commit: { type: "string", default: "unknown" } },
});
const native = loadNative();
native.openDriver(driverCandidates());
const info = native.init(0);
const kernels = new Kernels(native);
const HQ = 40, HKV = 8, D = 128;
const MIB = 2 ** 20;

// ---- device helpers ----
const live = new Set<DevicePtr>();
function alloc(bytes: number): DevicePtr {
  const p = native.memAlloc(bytes);
  live.add(p);
  return p;
}
function free(...ps: DevicePtr[]): void {
  for (const p of ps) if (live.delete(p)) native.memFree(p);
}
const SCRATCH = 256 * MIB;
const scratchBase = alloc(SCRATCH);
let scratchTop = 0;
const fa = new FlashAttention({
  kernels,
  native,
  smCount: info.smCount,
  uploadInts: (v) => {
    const p = alloc(Math.max(v.byteLength, 4));
    native.htod(p, v);
    return p;
  },
  scratch: (bytes) => {
    const at = Math.ceil(scratchTop / 256) * 256;
    if (at + bytes > SCRATCH) throw new Error(`bench scratch: ${bytes} bytes do not fit`);
    scratchTop = at + bytes;
    return scratchBase + BigInt(at);
  },
}, { sm90: info.ccMajor === 9 });
const defaultVariant = fa.prefillVariant; // what the engine runs on this GPU (wg on sm_90)
function randomFill(p: DevicePtr, n: number, seed: number): void {
  kernels.launch("random_normal_bf16", [Math.max(1, Math.min(Math.ceil(n / 512), 8192))], [256], (a) => a.ptr(p).u64(n).u32(seed).f32(1).f32(0));
}
const [evA, evB] = [native.eventCreate(), native.eventCreate()];
function time(fn: () => void, reps = 20, warm = 3): { ms: number; min: number; max: number } {
  for (let i = 0; i < warm; i++) fn();
  const t: number[] = [];
  for (let i = 0; i < reps; i++) {
    native.eventRecord(evA);
    fn();
    native.eventRecord(evB);
    t.push(native.eventElapsed(evA, evB));
  }
  t.sort((x, y) => x - y);
  return { ms: t[t.length >> 1], min: t[0], max: t[t.length - 1] };
}
function toHost(p: DevicePtr, n: number): Float32Array {
  const raw = new Uint16Array(n);
  native.dtoh(raw, p);
  return bf16ToFloat32(raw);
}
function relErr(a: Float32Array, b: Float32Array): number {
  let num = 0, den = 0, bad = 0;
  for (let i = 0; i < a.length; i++) {
    if (!Number.isFinite(a[i])) bad++;
    num += (a[i] - b[i]) ** 2;
    den += b[i] ** 2;
  }
  return bad > 0 ? Number.NaN : Math.sqrt(num / den);
}
function shuffle(n: number, seed: number): Int32Array {
  const p = Int32Array.from({ length: n }, (_, i) => i);
  let s = seed >>> 0;
  for (let i = n - 1; i > 0; i--) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    const j = s % (i + 1);
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}
function upload(v: Int32Array): DevicePtr {
  const p = alloc(v.byteLength);
  native.htod(p, v);
  return p;
}

const results: Record<string, unknown>[] = [];
let failures = 0;
function row(r: Record<string, unknown>): void {
  results.push(r);
  const f = (x: unknown, d = 1) => (typeof x === "number" ? x.toFixed(d) : "-");
  console.log(`${String(r.name).padEnd(52)} ${f(r.ms, 3).padStart(8)} ms  ${r.tflops !== undefined ? `${f(r.tflops)} TFLOP/s` : `${f(r.gb_s, 0)} GB/s (${f(r.of_copy, 2)} of copy)`}  ${r.check ?? ""}`);
}
async function section(name: string, body: () => void): Promise<void> {
  try {
    body();
  } catch (e) {
    failures++;
    console.log(`${name}: FAILED: ${(e as Error).stack ?? e}`);
  }
}

// ---- copy bandwidth (the decode bound), measured here ----
let copyGBs = 0;
await section("copy", () => {
  const half = 512 * MIB;
  const a = alloc(half), b = alloc(half);
  native.memset(a, 0x3f80, half / 2, 2);
  const t = time(() => native.dtod(b, a, half), 20, 3);
  copyGBs = (2 * half) / t.ms / 1e6;
  free(a, b);
  console.log(`device: ${info.name}, ${info.smCount} SMs; copy ${copyGBs.toFixed(0)} GB/s (read + write)`);
});

// ---- prefill ----
const torch = args.torch && existsSync(args.torch) ? JSON.parse(readFileSync(args.torch, "utf8")) : null;
function readBf16(name: string): Uint16Array | null {
  const f = args.io ? join(args.io, name) : "";
  if (!f || !existsSync(f)) return null;
  const b = readFileSync(f);
  return new Uint16Array(b.buffer, b.byteOffset, b.byteLength / 2);
}
function prefillFlops(kvLen: number, qLen: number, chunk: number): number {
  let keys = 0;
  for (let p = kvLen - qLen; p < kvLen; p++) keys += p - (chunk > 0 ? p - (p % chunk) : 0) + 1;
  return 4 * HQ * D * keys;
}

function prefill(name: string, kvLen: number, qLen: number, chunk: number, shuffled: boolean, useTorchInputs: boolean, variant: PrefillVariant = defaultVariant): void {
  fa.prefillVariant = variant;
  const q = alloc(qLen * HQ * D * 2), out = alloc(qLen * HQ * D * 2);
  const k = alloc(kvLen * HKV * D * 2), v = alloc(kvLen * HKV * D * 2);
  const slots = shuffled ? shuffle(kvLen, 99) : Int32Array.from({ length: kvLen }, (_, i) => i);
  let want: Float32Array | null = null;
  const tq = useTorchInputs ? readBf16("q.bin") : null, tk = useTorchInputs ? readBf16("k.bin") : null, tv = useTorchInputs ? readBf16("v.bin") : null, to = useTorchInputs ? readBf16("o_flash.bin") : null;
  if (tq && tk && tv && to && qLen === kvLen && tq.length === qLen * HQ * D) {
    native.htod(q, tq);
    // key u at slot slots[u]
    const w = HKV * D;
    const kp = new Uint16Array(kvLen * w), vp = new Uint16Array(kvLen * w);
    for (let u = 0; u < kvLen; u++) {
      kp.set(tk.subarray(u * w, (u + 1) * w), slots[u] * w);
      vp.set(tv.subarray(u * w, (u + 1) * w), slots[u] * w);
    }
    native.htod(k, kp);
    native.htod(v, vp);
    want = bf16ToFloat32(to);
  } else {
    randomFill(q, qLen * HQ * D, 1);
    randomFill(k, kvLen * HKV * D, 2);
    randomFill(v, kvLen * HKV * D, 3);
  }
  const slotTable = upload(slots);
  const seqs: FaSeq[] = [{ qStart: 0, qLen, kvLen, slotBase: 0 }];
  const key = {};
  native.memset(out, 0xffff, qLen * HQ * D, 2); // NaN: every element must be written
  const run = () => {
    scratchTop = 0;
    fa.run(key, seqs, { q, kPool: k, vPool: v, slotTable, out, rows: qLen, hq: HQ, hkv: HKV, dim: D, chunk });
  };
  run();
  let check = "";
  if (want) {
    const e = relErr(toHost(out, qLen * HQ * D), want);
    check = `vs torch flash: rel err ${e.toExponential(2)}`;
    if (!(e < 1e-2)) failures++;
  } else {
    const got = toHost(out, qLen * HQ * D);
    if (!got.every(Number.isFinite)) {
      check = "NaN in output";
      failures++;
    }
  }
  const t = time(run, 20, 3);
  const flops = prefillFlops(kvLen, qLen, chunk);
  const r: Record<string, unknown> = { name, kind: "prefill", variant, kvLen, qLen, chunk, shuffled, ms: t.ms, min_ms: t.min, max_ms: t.max, flops, tflops: flops / t.ms / 1e9, check };
  if (torch && kvLen === torch.seq && qLen === kvLen && chunk === 0) {
    if (torch.flash?.ms) r.vs_torch_flash = torch.flash.ms / t.ms;
    if (torch.cudnn?.ms) r.vs_torch_cudnn = torch.cudnn.ms / t.ms;
  }
  row(r);
  free(q, out, k, v, slotTable);
}

// Rows without a variant run the engine's default on this GPU (the summary line's "ours").
await section("prefill 8k", () => prefill(`prefill causal 8k, GQA 40/8, d128 (${defaultVariant})`, 8192, 8192, 0, false, true));
await section("prefill 8k w4", () => prefill("prefill causal 8k, 4-warp mma.sync kernel (w4)", 8192, 8192, 0, false, true, "w4"));
await section("prefill 8k w8", () => prefill("prefill causal 8k, 8-warp mma.sync kernel (w8)", 8192, 8192, 0, false, true, "w8"));
await section("prefill 2k", () => prefill(`prefill causal 2k, GQA 40/8, d128 (${defaultVariant})`, 2048, 2048, 0, false, false));
await section("prefill 2k w4", () => prefill("prefill causal 2k, w4", 2048, 2048, 0, false, false, "w4"));
await section("prefill 8k shuffled", () => prefill("prefill causal 8k, shuffled slots", 8192, 8192, 0, true, true));
await section("prefill chunked", () => prefill("prefill chunked-local 8192 over 16k", 16384, 16384, 8192, false, false));
await section("prefill prefix", () => prefill("prefill 1k over a 7k cached prefix", 8192, 1024, 0, false, false));

// ---- decode ----
function decode(name: string, batch: number, ctx: number, shuffled: boolean, reference: boolean): void {
  const n = batch * ctx;
  const q = alloc(batch * HQ * D * 2), out = alloc(batch * HQ * D * 2), ref = alloc(batch * HQ * D * 2);
  const k = alloc(n * HKV * D * 2), v = alloc(n * HKV * D * 2);
  randomFill(q, batch * HQ * D, 11);
  randomFill(k, n * HKV * D, 12);
  randomFill(v, n * HKV * D, 13);
  const slotTable = upload(shuffled ? shuffle(n, 7) : Int32Array.from({ length: n }, (_, i) => i));
  const seqs: FaSeq[] = Array.from({ length: batch }, (_, b) => ({ qStart: b, qLen: 1, kvLen: ctx, slotBase: b * ctx }));
  const key = {};
  native.memset(out, 0xffff, batch * HQ * D, 2);
  const run = () => {
    scratchTop = 0;
    fa.run(key, seqs, { q, kPool: k, vPool: v, slotTable, out, rows: batch, hq: HQ, hkv: HKV, dim: D, chunk: 0 });
  };
  run();
  // The reference kernel on the same inputs.
  const rowSlotBase = upload(Int32Array.from({ length: batch }, (_, b) => b * ctx));
  const rowPos = upload(new Int32Array(batch).fill(ctx - 1));
  const runRef = () =>
    kernels.launch("attention_bf16", [batch, HQ], [128], (a) =>
      a.ptr(q).ptr(k).ptr(v).ptr(slotTable).ptr(rowSlotBase).ptr(rowPos).ptr(ref).i32(HQ).i32(HKV).i32(D).i32(0).f32(1 / Math.sqrt(D)));
  runRef();
  const e = relErr(toHost(out, batch * HQ * D), toHost(ref, batch * HQ * D));
  if (!(e < 1e-2)) failures++;
  const t = time(run, 30, 3);
  const bytes = n * HKV * D * 2 * 2 + 2 * batch * HQ * D * 2;
  row({ name, kind: "decode", batch, ctx, shuffled, ms: t.ms, min_ms: t.min, max_ms: t.max, bytes, gb_s: bytes / t.ms / 1e6, of_copy: bytes / t.ms / 1e6 / copyGBs, check: `vs reference kernel: rel err ${e.toExponential(2)}` });
  if (reference) {
    const tr = time(runRef, 3, 1);
    row({ name: `${name} (reference kernel)`, kind: "decode-reference", batch, ctx, ms: tr.ms, bytes, gb_s: bytes / tr.ms / 1e6, of_copy: bytes / tr.ms / 1e6 / copyGBs });
  }
  free(q, out, ref, k, v, slotTable, rowSlotBase, rowPos);
}

for (const [batch, ctx, shuffled, reference] of [
  [1, 8192, false, false],
  [8, 8192, false, false],
  [32, 8192, false, true],
  [32, 8192, true, false],
  [128, 2048, false, false],
  [64, 16384, false, false],
] as const) {
  await section(`decode ${batch}×${ctx}`, () => decode(`decode batch ${batch} × ctx ${ctx}${shuffled ? ", shuffled slots" : ""}`, batch, ctx, shuffled, reference));
}

const summary = {
  gpu: info.name,
  sms: info.smCount,
  date: new Date().toISOString().slice(0, 10),
  commit: args.commit,
  copy_gb_s: copyGBs,
  torch,
  results,
  failures,
};
if (args.json) writeFileSync(args.json, JSON.stringify(summary, null, 1));
const main = results.find((r) => r.name === `prefill causal 8k, GQA 40/8, d128 (${defaultVariant})`);
if (main && torch) {
  console.log(`\nprefill 8k: ours ${(main.tflops as number).toFixed(1)} TFLOP/s, torch flash ${torch.flash?.tflops?.toFixed(1)} (ours/flash ${(main.vs_torch_flash as number)?.toFixed(2)}), cuDNN ${torch.cudnn?.tflops?.toFixed(1)} (ours/cuDNN ${(main.vs_torch_cudnn as number)?.toFixed(2)})`);
}
console.log(`attention bench: ${failures === 0 ? "PASS" : `${failures} FAILED`}`);
process.exit(failures === 0 ? 0 : 1);
