// bench-one-batch on the CPU fixture: prompts longer than --chunked-prefill-size are prefilled in
// chunks (as the server does) and decode exactly what one whole-prompt forward gives.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { join } from "node:path";
import { test } from "node:test";
import { fixturePath, packageRoot } from "../util/repo.js";

const CLI = join(packageRoot(), "dist", "src", "cli", "main.js");

function bench(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, "bench-one-batch", "--model-path", fixturePath("scout-tiny"), "--device", "cpu", "--json", ...args], { encoding: "utf8" });
  assert.equal(r.status, 0, r.stderr);
  return JSON.parse(r.stdout);
}

test("chunked prefill of long prompts decodes the same tokens as one forward", () => {
  const whole = bench("--batch-size", "2", "--input-len", "90", "--output-len", "5");
  assert.equal(whole.first_sequence_ids.length, 5);
  assert.equal(whole.decode_graph_gpu_s_median, null, "the CPU replays no decode graphs");
  for (const chunk of ["7", "64"]) {
    const chunked = bench("--batch-size", "2", "--input-len", "90", "--output-len", "5", "--chunked-prefill-size", chunk);
    assert.deepEqual(chunked.first_sequence_ids, whole.first_sequence_ids, `chunks of ${chunk}`);
  }
});

test("greedy on the device and --host-logits pick the same first and later tokens", () => {
  const device = bench("--batch-size", "3", "--input-len", "20", "--output-len", "4", "--chunked-prefill-size", "16");
  const host = bench("--batch-size", "3", "--input-len", "20", "--output-len", "4", "--chunked-prefill-size", "16", "--host-logits");
  assert.equal(device.first_sequence_ids.length, 4);
  assert.deepEqual(device.first_sequence_ids, host.first_sequence_ids);
});
