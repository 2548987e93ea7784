// `tsglang generate` as a user runs it: a child process, its stdout JSON and its exit code.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { cpSync, mkdtempSync, readFileSync, truncateSync, writeFileSync, statSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { test } from "node:test";
import { readGolden } from "../model/golden.js";
import { fixturePath, packageRoot } from "../util/repo.js";

const cli = join(packageRoot(), "dist", "src", "cli", "main.js");

function tsglang(...args: string[]) {
  const r = spawnSync(process.execPath, [cli, ...args], { encoding: "utf8", timeout: 120_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

for (const name of ["scout-tiny", "maverick-tiny"]) {
  test(`generate --json reproduces transformers' greedy continuation (${name})`, () => {
    for (const p of readGolden(fixturePath(name)).prompts) {
      const r = tsglang("generate", "--model-path", fixturePath(name), "--input-ids", p.prompt_ids.join(","), "--max-new-tokens", "16", "--json");
      assert.equal(r.code, 0, r.stderr);
      const out = JSON.parse(r.stdout);
      assert.deepEqual(out.input_ids, p.prompt_ids);
      assert.deepEqual(out.output_ids, p.greedy_ids);
      assert.equal(typeof out.timing.prefill_s, "number");
    }
  });
}

test("generate --prompt tokenises with the checkpoint's tokenizer (BOS added)", () => {
  const p = readGolden(fixturePath("scout-tiny")).prompts[0];
  const r = tsglang("generate", "--model-path", fixturePath("scout-tiny"), "--prompt", p.text!, "--max-new-tokens", "16", "--json");
  assert.equal(r.code, 0, r.stderr);
  const out = JSON.parse(r.stdout);
  assert.deepEqual(out.input_ids, p.prompt_ids);
  assert.deepEqual(out.output_ids, p.greedy_ids);
});

function oneLineError(r: { code: number | null; stdout: string; stderr: string }, re: RegExp) {
  assert.notEqual(r.code, 0);
  assert.equal(r.stdout, "");
  const lines = r.stderr.trim().split("\n");
  assert.equal(lines.length, 1, r.stderr);
  assert.match(lines[0], re);
}

test("generate on a missing directory: one-line error, non-zero exit", () => {
  oneLineError(tsglang("generate", "--model-path", "/nonexistent/model", "--input-ids", "1,2"), /\/nonexistent\/model/);
});

test("generate on a truncated safetensors file names the file", () => {
  const dir = mkdtempSync(join(tmpdir(), "tsglang-corrupt-"));
  cpSync(fixturePath("scout-tiny"), dir, { recursive: true });
  const f = join(dir, "model.safetensors");
  truncateSync(f, statSync(f).size - 1000);
  oneLineError(tsglang("generate", "--model-path", dir, "--input-ids", "1,2"), /model\.safetensors/);
});

test("generate with a bad config field names the field", () => {
  const dir = mkdtempSync(join(tmpdir(), "tsglang-badcfg-"));
  cpSync(fixturePath("scout-tiny"), dir, { recursive: true });
  const cfg = JSON.parse(readFileSync(join(dir, "config.json"), "utf8"));
  cfg.text_config.num_key_value_heads = 3;
  writeFileSync(join(dir, "config.json"), JSON.stringify(cfg));
  oneLineError(tsglang("generate", "--model-path", dir, "--input-ids", "1,2"), /text_config\.num_key_value_heads/);
});

test("generate rejects bad flags and out-of-vocabulary ids", () => {
  oneLineError(tsglang("generate", "--model-path", fixturePath("scout-tiny"), "--input-ids", "1,99999"), /99999/);
  oneLineError(tsglang("generate", "--model-path", fixturePath("scout-tiny"), "--input-ids", "1", "--temperature", "-1"), /--temperature/);
  oneLineError(tsglang("generate", "--bogus"), /bogus/);
});
