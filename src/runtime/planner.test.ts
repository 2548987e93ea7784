// The memory planner against hand-computed figures (docs/MEMORY.md), the four Scout cases and
// Maverick on 8×H200 from the issue, the error for a context that does not fit, the `plan` CLI
// (built, with --json) and the shared flag parser.

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, test } from "node:test";
import { loadConfig, type Llama4Config } from "../model/config.js";
import { ArgsError, formatHelp, parseArgs } from "../cli/args.js";
import { packageRoot } from "../util/repo.js";
import {
  GPUS,
  PlanError,
  SLOT_TABLE_MAX_ENTRIES,
  defaultMemFractionStatic,
  gpuFromBytes,
  planMemory,
  visionParamCount,
  weightsPerRank,
  type GpuName,
  type PlanInput,
} from "./planner.js";

const root = packageRoot();
const SCOUT_DIR = join(root, "models", "configs", "llama4-scout-17b-16e-instruct");
const MAVERICK_DIR = join(root, "models", "configs", "llama4-maverick-17b-128e-instruct");

function model(dir: string): { config: Llama4Config; visionParams: number } {
  const config = loadConfig(dir);
  const raw = JSON.parse(readFileSync(join(dir, "config.json"), "utf8")) as Record<string, unknown>;
  return { config, visionParams: visionParamCount(raw.vision_config, config.hiddenSize) };
}
const scout = model(SCOUT_DIR);
const maverick = model(MAVERICK_DIR);

function plan(m: typeof scout, gpu: GpuName, extra: Partial<PlanInput> = {}) {
  return planMemory({ ...m, tp: 8, gpu: GPUS[gpu], ...extra });
}

describe("shipped hub configs", () => {
  test("Scout config.json parses to the llama4-spec.md §2.2 values", () => {
    const c = scout.config;
    assert.equal(c.layout, "conditional");
    assert.equal(c.numLayers, 48);
    assert.equal(c.hiddenSize, 5120);
    assert.equal(c.numExperts, 16);
    assert.equal(c.maxPositionEmbeddings, 10_485_760);
    assert.deepEqual(c.ropeScaling, { type: "llama3", factor: 16, lowFreqFactor: 1, highFreqFactor: 1, originalMaxPositionEmbeddings: 8192 });
    assert.equal(c.layers.filter((l) => l.chunkSize === 8192).length, 36);
    assert.equal(c.layers.filter((l) => l.chunkSize === 0).length, 12);
    assert.ok(c.layers.every((l) => l.moe));
    assert.ok(c.layers.every((l) => l.qkNorm === l.rope));
  });

  test("Maverick config.json parses to the llama4-spec.md §2.2 values", () => {
    const c = maverick.config;
    assert.equal(c.numExperts, 128);
    assert.equal(c.maxPositionEmbeddings, 1_048_576);
    assert.equal(c.ropeScaling, null);
    assert.deepEqual(c.layers.filter((l) => l.moe).map((l) => l.index), Array.from({ length: 24 }, (_, i) => 2 * i + 1));
    assert.ok(c.layers.every((l) => !l.qkNorm));
  });
});

describe("weights per GPU", () => {
  test("tp 1 text parameters equal llama4-spec.md §2.5; vision tower 871,932,416", () => {
    assert.equal(weightsPerRank(scout.config, 1, 1, 0).totalParams, 107_769_861_120);
    assert.equal(weightsPerRank(maverick.config, 1, 1, 0).totalParams, 400_711_848_960);
    assert.equal(scout.visionParams, 871_932_416);
    assert.equal(maverick.visionParams, 871_932_416);
  });

  test("Scout at tp 8: 14,347,040,256 params = 28,694,080,512 bytes per GPU", () => {
    // Per layer per rank: attention (5 q heads + 2·1 kv head)·128·5120 + 5·128·5120 = 7,864,320;
    // norms 10,240; router 16·5120 = 81,920 (replicated); routed experts 16·3·5120·1024 =
    // 251,658,240 (width 8192/8); shared expert 3·5120·1024 = 15,728,640 → 275,343,360 × 48 =
    // 13,216,481,280. Embed + lm_head 2·(202,048/8 = 25,256)·5120 = 258,621,440; final norm 5120.
    // Text 13,475,107,840 + vision 871,932,416 (replicated) = 14,347,040,256.
    const w = weightsPerRank(scout.config, 8, 1, scout.visionParams);
    assert.equal(w.totalParams, 14_347_040_256);
    assert.equal(w.bytes, 28_694_080_512);
    assert.equal(w.routedExpertParams, 48 * 251_658_240);
    // Expert parallelism moves experts between ranks but keeps the per-rank total.
    assert.equal(weightsPerRank(scout.config, 8, 8, scout.visionParams).totalParams, w.totalParams);
  });

  test("Maverick at tp 8: 50,975,110,656 params = 101,950,221,312 bytes (94.95 GiB) per GPU", () => {
    // 24 MoE layers × 128·3·5120·1024 = 48,318,382,080 routed; 24 × 3·5120·1024 = 377,487,360
    // shared; 24 dense × 3·5120·2048 = 754,974,720; attention 48 × 7,864,320 = 377,487,360;
    // routers 24·128·5120 = 15,728,640; norms 97·5120 = 496,640; embed + lm_head 258,621,440;
    // vision 871,932,416.
    const w = weightsPerRank(maverick.config, 8, 1, maverick.visionParams);
    assert.equal(w.totalParams, 50_975_110_656);
    assert.equal(w.bytes, 101_950_221_312);
  });

  test("invalid parallel layouts are errors", () => {
    assert.throws(() => weightsPerRank(scout.config, 16, 1, 0), /--tp 16 does not divide the 40 attention heads/);
    assert.throws(() => weightsPerRank(scout.config, 8, 3, 0), /--ep 3 must divide --tp 8/);
  });
});

describe("SGLang defaults (sglang-notes.md §2.6)", () => {
  test("mem_fraction_static 0.818 on H100 and 0.897 on H200 at tp 8", () => {
    // reserved = 512 + 1.5·8192 + (8/8)·1024 + 2·512 = 14,848 MiB; (81,559 − 14,848)/81,559 = 0.81795.
    assert.equal(defaultMemFractionStatic(81559, 8, 8192, 512), 0.818);
    // (143,771 − 14,848)/143,771 = 0.89672.
    assert.equal(defaultMemFractionStatic(143771, 8, 8192, 512), 0.897);
    assert.equal(plan(scout, "h100").memFractionStatic, 0.818);
    assert.equal(plan(scout, "h200").memFractionStatic, 0.897);
  });

  test("KV bytes per token per GPU at tp 8: 512 a layer, 6,144 global, 18,432 local", () => {
    // 1 KV head per rank × (128 K + 128 V) × 2 bytes (llama4-spec.md §2.6 divided by 8).
    const p = plan(scout, "h100");
    assert.equal(p.kvBytesPerTokenPerLayer, 512);
    assert.equal(p.kvBytesPerTokenGlobal, 12 * 512);
    assert.equal(p.kvBytesPerTokenLocal, 36 * 512);
    assert.equal(plan(scout, "h100", { kvCacheDtype: "fp8_e4m3" }).kvBytesPerTokenPerLayer, 256);
  });
});

// Common to the Scout cases:
//   H100: gpu 81,559 MiB = 85,520,809,984 B; overhead 640 MiB driver + 1 GiB context + 1.5 GiB NCCL =
//         3,355,443,200 → pre 82,165,366,784; static = ⌊0.818·pre⌋ = 67,211,270,029;
//         B = static − weights 28,694,080,512 = 38,517,189,517 (35.87 GiB).
//   H200: gpu 150,754,820,096 B; pre 147,399,376,896; static ⌊0.897·pre⌋ = 132,217,241,075;
//         B = 103,523,160,563 (96.41 GiB).
describe("Scout at --tp 8 (the seed's context lengths)", () => {
  test("8×H100 without the hybrid cache serves ≥ 1M tokens: max 1,370,911", () => {
    // SGLang's R would be 2048, whose table and graph buffers (≈ 14 GB at 1.37M) exceed the B/8 =
    // 4,814,648,689 cap, so the buffers get the cap. Cell = 48·512 + 8 (free list) = 24,584 B.
    // full = ⌊(B − B/8 − one padding page 24,584) / 24,584⌋ = ⌊33,702,516,244 / 24,584⌋ = 1,370,912;
    // one request needs L + 1 page ⇒ L ≤ 1,370,911.
    const p = plan(scout, "h100", { hybrid: false });
    assert.equal(p.kvBudgetBytes, 38_517_189_517);
    assert.equal(p.maxContextLength, 1_370_911);
    assert.ok(p.maxContextLength >= 1_048_576);
    const at1M = plan(scout, "h100", { hybrid: false, contextLength: 1_048_576 });
    assert.ok(at1M.fits);
    assert.equal(at1M.swaPoolTokens, 0);
    assert.ok(at1M.fullPoolTokens >= 1_048_576 + 1);
    // Everything on the card adds up to the card.
    assert.equal(at1M.runtimeOverheadBytes + at1M.reserveBytes + at1M.weightsBytesPerGpu + at1M.reqToTokenBytes + at1M.graphBufferBytes + at1M.fullPoolBytes + at1M.unusedBytes, at1M.gpuMemoryBytes);
    assert.ok(at1M.activationBytes < at1M.reserveBytes);
    assert.ok(!plan(scout, "h100", { hybrid: false, contextLength: 1_370_912 }).fits);
  });

  test("8×H200 without the hybrid cache serves ≥ 2.5M tokens: max 3,684,620", () => {
    // B/8 = 12,940,395,070; full = ⌊(B − B/8 − 24,584) / 24,584⌋ = ⌊90,582,740,909 / 24,584⌋ = 3,684,621.
    const p = plan(scout, "h200", { hybrid: false });
    assert.equal(p.maxContextLength, 3_684_620);
    assert.ok(plan(scout, "h200", { hybrid: false, contextLength: 2_621_440 }).fits);
    assert.ok(!plan(scout, "h200", { hybrid: false, contextLength: 3_684_621 }).fits);
  });

  test("8×H100 with the hybrid cache serves ≥ 5M tokens with --swa-full-tokens-ratio 0.0548 (auto)", () => {
    // The default ratio 0.8 gives a 20,912 B cell (6,160 + 0.8·18,440) and tops out at 1,623,913.
    const def = plan(scout, "h100", { contextLength: 5_000_000 });
    assert.equal(def.fits, false);
    assert.match(def.error ?? "", /largest value that fits with these settings .* is 1623913; it fits with --swa-full-tokens-ratio 0\.0548 \(or auto\)/);
    const p = plan(scout, "h100", { contextLength: 5_000_000, swaFullTokensRatio: "auto" });
    assert.ok(p.fits);
    assert.equal(p.swaFullTokensRatio, 0.0548);
    assert.ok(p.fullPoolTokens >= 5_000_001);
    // The SWA pool holds a window (8192 + 128 + 1 + 1) for each running request plus two chunks.
    assert.equal(p.maxRunningRequests, 30);
    assert.ok(p.swaPoolTokens >= 30 * 8322 + 2 * 8192 + 1);
    // The ratio auto picked, passed back explicitly, gives the same plan.
    const again = plan(scout, "h100", { contextLength: 5_000_000, swaFullTokensRatio: 0.0548 });
    assert.ok(again.fits);
    assert.equal(again.fullPoolTokens, p.fullPoolTokens);
    // Largest with auto: one request, ratio 0.0041: the SWA pool needs 8,322 + 16,385 = 24,707
    // slots; L ≈ (B − 24,600) / (6,160 + 0.0041·18,440 + 20 B of per-token tables) ≈ 6.157M.
    const auto = plan(scout, "h100", { swaFullTokensRatio: "auto" });
    assert.equal(auto.maxContextLength, 6_157_222);
    assert.equal(auto.contextLengthSource, "clamped");
    assert.equal(auto.maxRunningRequests, 1);
    assert.ok(auto.maxContextLength >= 5_242_880);
  });

  test("8×H200 with the hybrid cache serves the full 10,485,760 with --swa-full-tokens-ratio 0.1344 (auto)", () => {
    const def = plan(scout, "h200", { contextLength: 10_485_760 });
    assert.equal(def.fits, false);
    assert.match(def.error ?? "", /is 4331614; it fits with --swa-full-tokens-ratio 0\.1344/);
    const p = plan(scout, "h200", { swaFullTokensRatio: "auto" });
    assert.ok(p.fits);
    assert.equal(p.contextLength, 10_485_760);
    assert.equal(p.contextLengthSource, "config");
    assert.equal(p.swaFullTokensRatio, 0.1344);
    assert.equal(p.maxContextLength, 10_485_760); // capped by max_position_embeddings
    assert.ok(p.memoryMaxContextLength > 16_000_000);
    assert.ok(p.fullPoolTokens >= 10_485_761);
    assert.equal(p.maxRunningRequests, 76);
  });

  test("every context length up to the maximum fits (monotone), one more does not", () => {
    const cases: [GpuName, Partial<PlanInput>][] = [
      ["h100", { hybrid: false }],
      ["h100", {}],
      ["h100", { swaFullTokensRatio: "auto" }],
      ["h200", {}],
    ];
    for (const [gpu, extra] of cases) {
      const max = plan(scout, gpu, extra).maxContextLength;
      for (const L of [1, 8191, 8193, 65536, Math.floor(max / 3), Math.floor(max / 2), max - 1000, max - 1, max]) {
        assert.ok(plan(scout, gpu, { ...extra, contextLength: L }).fits, `${gpu} ${JSON.stringify(extra)} L=${L}`);
      }
      assert.ok(!plan(scout, gpu, { ...extra, contextLength: max + 1 }).fits);
    }
  });
});

test("the slot tables stay within 32-bit indices: (R + 1)·L ≤ 2^31 − 1, else an error naming the most requests", () => {
  for (const [hybrid, contextLength] of [[false, 2_500_000], [true, 10_000_000], [true, undefined]] as const) {
    const p = plan(scout, "h200", { hybrid, contextLength, swaFullTokensRatio: hybrid ? "auto" : undefined });
    assert.ok(p.fits && (p.maxRunningRequests + 1) * p.contextLength <= SLOT_TABLE_MAX_ENTRIES, `${contextLength}: R ${p.maxRunningRequests}`);
  }
  // ⌊(2^31 − 1) / 2.5M⌋ − 1 = 857 rows of 2.5M fit the indices; 1000 do not.
  const bad = plan(scout, "h200", { hybrid: false, contextLength: 2_500_000, maxRunningRequests: 1000 });
  assert.equal(bad.fits, false);
  assert.match(bad.error!, /--max-running-requests 1000 at --context-length 2500000 needs 2,502,500,000 slot-table entries, more than the 2,147,483,647 .* at most 857 running requests/);
});

describe("Maverick on 8×H200", () => {
  test("serves its default context (1,048,576) without --context-length", () => {
    // B = 132,217,241,075 − 101,950,221,312 = 30,267,019,763; cell 20,912 ⇒ with no buffers
    // full = 1,447,350, swa = 1,157,880 ⇒ at most ⌊(1,157,880 − 16,385)/8,322⌋ = 137 requests;
    // their buffers (table 138·1,048,580·4 + graphs 137·(4·3·1,048,576 + 64)) = 2,302,683,872 < B/8.
    // Pass 1: full = ⌊(B − 2,302,683,872 − 24,600)/20,912⌋ = 1,337,248, swa 1,069,798 ⇒ R = 126.
    // Pass 2 with R = 126's buffers (2,118,133,616): full = 1,346,062, swa = ⌊0.8·full⌋ = 1,076,849.
    const p = plan(maverick, "h200");
    assert.ok(p.fits);
    assert.equal(p.contextLength, 1_048_576);
    assert.equal(p.contextLengthSource, "config");
    assert.equal(p.swaFullTokensRatio, 0.8);
    assert.equal(p.weightsBytesPerGpu, 101_950_221_312);
    assert.equal(p.maxRunningRequests, 126);
    assert.equal(p.fullPoolTokens, 1_346_062);
    assert.equal(p.swaPoolTokens, 1_076_849);
    assert.equal(p.reqToTokenBytes, 127 * 1_048_580 * 4);
    // Also without the hybrid cache (every layer keeps every token).
    assert.ok(plan(maverick, "h200", { hybrid: false }).fits);
  });

  test("does not fit 8×H100 in bf16, and says why", () => {
    const p = plan(maverick, "h100");
    assert.equal(p.fits, false);
    assert.match(p.error ?? "", /weights need 94\.95 GiB per GPU, more than the 76\.52 GiB free/);
  });

  test("a context beyond max_position_embeddings is an error", () => {
    assert.match(plan(maverick, "h200", { contextLength: 2_000_000 }).error ?? "", /exceeds the model's max_position_embeddings 1048576/);
  });
});

describe("other settings", () => {
  test("an explicit --max-running-requests sizes the table; too many for the SWA pool is an error", () => {
    const p = plan(scout, "h100", { contextLength: 1_000_000, maxRunningRequests: 8 });
    assert.ok(p.fits);
    assert.equal(p.maxRunningRequests, 8);
    assert.equal(p.cudaGraphMaxBs, 8);
    assert.equal(p.reqToTokenBytes, 9 * 1_000_004 * 4);
    const big = plan(scout, "h100", { contextLength: 5_000_000, swaFullTokensRatio: 0.0548, maxRunningRequests: 64 });
    assert.equal(big.fits, false);
    assert.match(big.error ?? "", /--max-running-requests 64/);
  });

  test("--disable-cuda-graph (graph bs 0) has no graph buffers", () => {
    const p = plan(scout, "h100", { hybrid: false, contextLength: 1_000_000, cudaGraphMaxBs: 0 });
    assert.ok(p.fits);
    assert.equal(p.graphBufferBytes, 0);
  });

  test("an explicit GPU size and a tiny model", () => {
    const tiny = loadConfig(join(root, "test", "fixtures", "scout-tiny"));
    const p = planMemory({ config: tiny, tp: 1, gpu: gpuFromBytes(8e9), memFractionStatic: 0.5 });
    assert.ok(p.fits);
    assert.equal(p.contextLength, tiny.maxPositionEmbeddings);
    assert.throws(() => planMemory({ config: tiny, tp: 1, gpu: gpuFromBytes(2e9) }), PlanError);
    assert.throws(() => planMemory({ config: tiny, tp: 1, gpu: gpuFromBytes(8e9), memFractionStatic: 0.5, swaFullTokensRatio: 1.5 }), /in \(0, 1\]/);
  });
});

describe("tsglang plan (built CLI)", () => {
  const mainJs = join(root, "dist", "src", "cli", "main.js");
  const run = (...args: string[]) => spawnSync(process.execPath, [mainJs, "plan", ...args], { encoding: "utf8" });

  test("--json prints one object with the documented keys", () => {
    const r = run("--model-path", SCOUT_DIR, "--tp", "8", "--gpu", "h200", "--swa-full-tokens-ratio", "auto", "--json");
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout) as Record<string, unknown>;
    for (const k of ["max_context_length", "full_pool_tokens", "swa_pool_tokens", "mem_fraction_static", "swa_full_tokens_ratio", "weights_bytes_per_gpu"]) {
      assert.equal(typeof j[k], "number", k);
    }
    assert.equal(j.max_context_length, 10_485_760);
    assert.equal(j.swa_full_tokens_ratio, 0.1344);
    assert.equal(j.weights_bytes_per_gpu, 28_694_080_512);
  });

  test("--model-config FILE and the text table", () => {
    const r = run("--model-config", join(MAVERICK_DIR, "config.json"), "--tp", "8", "--gpu", "h200");
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /max_context_length\s+1,048,576/);
    assert.match(r.stdout, /full KV pool/);
  });

  test("a --context-length too large fails in under 5 s with the limit in the message", () => {
    const t0 = Date.now();
    const r = run("--model-path", SCOUT_DIR, "--tp", "8", "--gpu", "h100", "--disable-hybrid-swa-memory", "--context-length", "2000000", "--json");
    const ms = Date.now() - t0;
    assert.equal(r.status, 1);
    assert.equal(r.stdout, "");
    assert.equal(r.stderr.trim().split("\n").length, 1);
    assert.match(r.stderr, /--context-length 2000000 does not fit: the largest value that fits with these settings .* is 1370911/);
    assert.ok(ms < 5000, `${ms} ms`);
  });

  test("bad flags are one-line errors", () => {
    const r = run("--model-path", SCOUT_DIR, "--gpu", "h100", "--tpp", "8");
    assert.equal(r.status, 2);
    assert.match(r.stderr, /unknown flag --tpp/);
    const r2 = run("--model-path", SCOUT_DIR, "--gpu", "a100");
    assert.match(r2.stderr, /--gpu must be one of h100, h200/);
  });
});

describe("flag parser (src/cli/args.ts)", () => {
  const specs = {
    "model-path": { type: "string", help: "dir" },
    tp: { type: "int", min: 1, default: 1, alias: ["tp-size"], help: "tp" },
    ratio: { type: "number", keywords: ["auto"], default: 0.8, help: "r" },
    chunk: { type: "int", help: "chunk" },
    mode: { type: "string", choices: ["a", "b"], default: "a", help: "mode" },
    json: { type: "boolean", help: "json" },
  } as const;

  test("values, '=' form, aliases, booleans, keywords and defaults", () => {
    const { values, given, help } = parseArgs(specs, ["--model-path", "/m", "--tp-size=4", "--ratio", "auto", "--json", "--chunk", "-1"]);
    assert.equal(help, false);
    assert.equal(values["model-path"], "/m");
    assert.equal(values.tp, 4);
    assert.equal(values.ratio, "auto");
    assert.equal(values.chunk, -1);
    assert.equal(values.json, true);
    assert.equal(values.mode, "a");
    assert.deepEqual([...given].sort(), ["chunk", "json", "model-path", "ratio", "tp"]);
    const d = parseArgs(specs, []).values;
    assert.equal(d.tp, 1);
    assert.equal(d.ratio, 0.8);
    assert.equal(d.json, false);
    assert.equal(d["model-path"], undefined);
    assert.equal(parseArgs(specs, ["--json=false"]).values.json, false);
    assert.equal(parseArgs(specs, ["-h"]).help, true);
  });

  test("errors name the flag", () => {
    assert.throws(() => parseArgs(specs, ["--nope", "1"]), (e: unknown) => e instanceof ArgsError && /unknown flag --nope/.test(e.message));
    assert.throws(() => parseArgs(specs, ["--tp", "0"]), /--tp must be ≥ 1, got 0/);
    assert.throws(() => parseArgs(specs, ["--tp", "1.5"]), /--tp must be an integer/);
    assert.throws(() => parseArgs(specs, ["--ratio", "x"]), /--ratio must be a number or 'auto'/);
    assert.throws(() => parseArgs(specs, ["--tp"]), /--tp needs a value/);
    assert.throws(() => parseArgs(specs, ["--tp", "--json"]), /--tp needs a value/);
    assert.throws(() => parseArgs(specs, ["--mode", "c"]), /--mode must be one of a, b/);
    assert.throws(() => parseArgs(specs, ["stray"]), /unexpected argument 'stray'/);
  });

  test("--help lists every flag with its default", () => {
    const h = formatHelp("demo", "A demo.", specs);
    assert.match(h, /^usage: tsglang demo \[flags\]/);
    assert.match(h, /--tp N\s+tp \(alias: --tp-size\) \[default: 1\]/);
    assert.match(h, /--ratio N\|auto\s+r \[default: 0\.8\]/);
    assert.match(h, /--json\s+json/);
  });
});
