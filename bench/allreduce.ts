// The custom all-reduce over peer memory vs NCCL: median µs per bf16 all-reduce inside CUDA
// graphs (100 calls per graph, rank 0), for the message sizes of tensor parallelism's decode
// ([tokens, 5120] bf16: 10 KiB per token). Checks nothing (peer_allreduce.cuda.test.ts does).
// Usage: NCCL_NVLS_ENABLE=0 node dist/bench/allreduce.js [ranks, default every visible GPU] [sizes in bytes...]
//   TSGLANG_CUSTOM_AR_MAX_BYTES moves the custom path's threshold (default 1 MiB for ≤ 5 ranks).

import { cudaDeviceCount } from "../src/runtime/cuda/backend.js";
import { benchLine, peerAllReduceCheck } from "../src/runtime/cuda/peer_allreduce_check.js";

process.env.NCCL_NVLS_ENABLE ??= "0";
const [ranksArg, ...sizeArgs] = process.argv.slice(2);
const ranks = ranksArg ? Number(ranksArg) : cudaDeviceCount();
const sizes = sizeArgs.length > 0 ? sizeArgs.map(Number) : [10 * 1024, 64 * 1024, 256 * 1024, 512 * 1024, 640 * 1024, 1024 * 1024, 2048 * 1024];
const r = await peerAllReduceCheck(ranks, { calls: 0, replays: 0, benchBytes: sizes, benchOnly: true });
if (r.off) console.log(`custom all-reduce off: ${r.off}`);
console.log(`${ranks} GPUs, custom all-reduce up to ${r.maxBytes} bytes; median µs per all-reduce, 100 per CUDA graph, rank 0:`);
for (const b of r.bench) console.log(`  ${benchLine(b)}`);
for (const n of r.notes) console.log(`  (${n})`);
if (r.failures.length > 0) {
  console.log(r.failures.join("\n"));
  process.exitCode = 1;
}
