// The custom all-reduce over peer memory (peer_allreduce.ts, native/kernels/allreduce.cu) on 2,
// 4 and 8 GPUs as many as are visible: every size from 1 element to the threshold (odd sizes,
// unaligned tensors) equals the fp32 sum in rank order bit for bit, identical bytes on every
// rank, 1,200 consecutive calls with no host sync between them, a captured CUDA graph replayed
// 500 times with direct calls in between, larger messages on NCCL; then the micro-benchmark
// against NCCL (median µs per call inside CUDA graphs) for docs/PERF.md. Skipped, with the
// reason, without two CUDA devices and NCCL.

process.env.NCCL_NVLS_ENABLE ??= "0"; // never NVLink multicast (shared hosts: see the device notes)

import assert from "node:assert/strict";
import { describe, test } from "node:test";
import { ncclDescription } from "./nccl.js";
import { benchLine, peerAllReduceCheck } from "./peer_allreduce_check.js";
import { multiGpu } from "./check.js";

const { count, skip } = multiGpu();

test("custom all-reduce on GPUs: devices, or why skipped", () => {
  console.log(skip ? `# skipped: ${skip}` : `# ${count} CUDA devices; NCCL ${ncclDescription()}; NCCL_NVLS_ENABLE=${process.env.NCCL_NVLS_ENABLE}`);
});

describe("custom all-reduce over peer memory", { skip }, () => {
  for (const ranks of [2, 4, 8].filter((r) => r <= count)) {
    test(`${ranks} ranks: rank-order sums, identical bytes, consecutive calls, graph replays; vs NCCL`, async (t) => {
      const r = await peerAllReduceCheck(ranks, { calls: 1200, replays: 500, benchBytes: [10 * 1024, 60 * 1024, 64 * 1024, 320 * 1024, 512 * 1024, 1024 * 1024] });
      if (/no peer access|could not use peer memory/.test(r.off)) {
        t.skip(`custom all-reduce off on these GPUs: ${r.off}`);
        return;
      }
      assert.equal(r.off, "", `custom all-reduce off: ${r.off}`);
      for (const n of r.notes) console.log(`# ${n}`);
      console.log(`# ${ranks} GPUs: custom all-reduce up to ${r.maxBytes} bytes; ${r.calls.join("/")} custom calls on the ranks`);
      console.log(`# median µs per all-reduce, 100 per CUDA graph, rank 0:`);
      for (const b of r.bench) console.log(`#   ${benchLine(b)}`);
      assert.deepEqual(r.failures, []);
    });
  }
});
