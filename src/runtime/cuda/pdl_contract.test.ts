// The programmatic-dependent-launch contract, checked in the kernel sources (no GPU needed):
// Kernels.launch lets every kernel start before its predecessor ends, so each __global__ body
// must open with gridDependencyWait() (before any memory access or early return, in every
// block), then gridDependencyLaunchDependents(). Kernels defined inside #define bodies are
// scanned the same way once their line continuations are removed. The exceptions (common.cuh):
// attention's prep and decode read step inputs written two or more launches back before the
// wait, the one-token GEMVs and MoE gate_up load their first weights before it, the pushed
// all-reduce its residual row and norm weight, and the one-token MoE down runs its shared pass
// behind a count of gate_up's finished slabs; their kernels open with a call to the device
// function that holds the prologue (fa decode lets its dependents launch only once its first K/V
// tiles are queued, so there the two calls are apart).

import assert from "node:assert/strict";
import { readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { packageRoot } from "../../util/repo.js";

const PROLOGUE = "gridDependencyWait();gridDependencyLaunchDependents();";
/** Device functions that read step inputs, then run the prologue themselves: their files. */
const WAITS_INSIDE: Record<string, string> = {
  flashAttention: "attention_fa.cu",
  attnPrep: "attention_prep.cu",
  moeDownDecode: "moe_decode.cu",
  moeGateUpRouted: "moe_decode.cu",
  gemv: "gemv.cu",
  gemv3: "gemv.cu",
  pushedAddRmsNorm: "allreduce.cu",
};

/** Every __global__ function in `source`: its name and the text of its body from the opening brace on. */
function kernels(source: string): { name: string; body: string }[] {
  const text = source.replace(/\\\n/g, "\n").replace(/\/\/[^\n]*/g, "");
  const found: { name: string; body: string }[] = [];
  for (const m of text.matchAll(/__global__/g)) {
    let i = m.index + m[0].length;
    let depth = 0;
    let name = "";
    for (; i < text.length; i++) {
      const c = text[i];
      if (c === "(") {
        // the last identifier before the first top-level "(" that is not __launch_bounds__ is the name
        if (depth === 0) {
          const id = /([\w#]+)\s*$/.exec(text.slice(m.index, i))?.[1] ?? "";
          if (id !== "__launch_bounds__") name ||= id;
        }
        depth++;
      } else if (c === ")") depth--;
      else if (c === "{" && depth === 0) break;
    }
    found.push({ name, body: text.slice(i + 1) });
  }
  return found;
}

test("every kernel waits for its predecessor first, then lets its dependents launch", () => {
  const dir = join(packageRoot(), "native", "kernels");
  const files = readdirSync(dir).filter((f) => f.endsWith(".cu"));
  let count = 0;
  for (const file of files) {
    for (const k of kernels(readFileSync(join(dir, file), "utf8"))) {
      count++;
      const body = k.body.replace(/\s+/g, "");
      const inside = Object.keys(WAITS_INSIDE).find((f) => body.startsWith(`${f}<`) || body.startsWith(`${f}(`));
      if (inside !== undefined && WAITS_INSIDE[inside] === file) continue;
      assert.equal(body.slice(0, PROLOGUE.length), PROLOGUE, `${file}: kernel ${k.name} must begin with gridDependencyWait(); gridDependencyLaunchDependents();`);
    }
  }
  // 48 definitions today (macros counted once): guards against a scan that silently finds nothing.
  assert.ok(count >= 48, `found only ${count} __global__ definitions in native/kernels`);
});

test("the functions that wait inside wait once and let their dependents launch once, after the wait", () => {
  const dir = join(packageRoot(), "native", "kernels");
  for (const [fn, file] of Object.entries(WAITS_INSIDE)) {
    const text = readFileSync(join(dir, file), "utf8").replace(/\/\/[^\n]*/g, "").replace(/\s+/g, "");
    const def = new RegExp(`void${fn}\\(`).exec(text);
    assert.ok(def, `${file}: ${fn} not found`);
    // The body: from the first "{" after the parameter list to its matching "}".
    let i = text.indexOf("{", def.index);
    const open = i;
    for (let depth = 0; i < text.length; i++) {
      if (text[i] === "{") depth++;
      else if (text[i] === "}" && --depth === 0) break;
    }
    const body = text.slice(open, i + 1);
    // Usually the two together (PROLOGUE); fa decode queues its first K/V tiles between them.
    const wait = "gridDependencyWait();", launch = "gridDependencyLaunchDependents();";
    assert.equal(body.split(wait).length - 1, 1, `${file}: ${fn} must run ${wait} once`);
    assert.equal(body.split(launch).length - 1, 1, `${file}: ${fn} must run ${launch} once`);
    assert.ok(body.indexOf(wait) < body.indexOf(launch), `${file}: ${fn} must wait before letting its dependents launch`);
  }
});
