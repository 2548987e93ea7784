// The decode path of the CUDA backend: the GEMV kernels (gemv.cu) against the CPU backend and
// batch-invariant to the bit, the device-side MoE (moe_decode.cu) against the CPU backend and
// the host-sorted path, and CUDA-graph decode steps identical to direct ones. Skipped without a
// CUDA device, like backend.test.ts.

import assert from "node:assert/strict";
import { after, describe, test } from "node:test";
import type { SeqSpan } from "../backend.js";
import { CpuBackend, CpuTensor } from "../cpu.js";
import { Rng } from "../../engine/sampling.js";
import { ContiguousBatch } from "../../engine/sequence.js";
import { sampledRuns } from "../../engine/sample_check.js";
import { readGolden } from "../../model/golden.js";
import { loadModel } from "../../model/loader.js";
import { fixturePath } from "../../util/repo.js";
import { CudaBackend, type CudaBackendOptions, type Precision } from "./backend.js";
import { probeCuda } from "./native.js";
import { close, host, randn } from "./check.js";

const probe = probeCuda();
const skip = probe.ok ? false : `no CUDA device (${probe.reason.split("\n")[0].replace(/; tried:$/, "")})`;
const MIB = 2 ** 20;
const TOL: Record<Precision, number> = { bf16: 1.5e-2, f32: 2e-5 };

function identical(a: Float32Array, b: Float32Array, what: string): void {
  assert.equal(a.length, b.length, `${what}: length`);
  for (let i = 0; i < a.length; i++) {
    if (!(Object.is(a[i], b[i]) || a[i] === b[i])) assert.fail(`${what}: element ${i}: ${a[i]} ≠ ${b[i]}`);
  }
}

function backend(precision: Precision, opts: CudaBackendOptions = {}): CudaBackend {
  return new CudaBackend({ precision, memoryBytes: 768 * MIB, stepBytes: 192 * MIB, poison: true, ...opts });
}

for (const precision of ["f32", "bf16"] as const) {
  describe(`cuda decode kernels (${precision})`, { skip }, () => {
    const rng = new Rng(4321);
    const cpu = new CpuBackend();
    const tol = TOL[precision];
    let gpu: CudaBackend | undefined;
    let hostMoe: CudaBackend | undefined;
    let gemv8: CudaBackend | undefined;
    const g = () => (gpu ??= backend(precision));
    after(() => {
      gpu?.destroy();
      hostMoe?.destroy();
      gemv8?.destroy();
    });

    // out sizes pick every rows-per-block (1 with an 8-way K split, 2, 4, 8 on a 132-SM H100).
    test("GEMV linear (n ≤ 8): vs the CPU, fp32 out, every rows-per-block; batch-invariant to the bit", () => {
      const be = (gemv8 ??= backend(precision, { gemvMaxTokens: 8 })); // every pass width, 1 to 8 rows
      const g = () => be;
      for (const [inDim, out] of [[64, 40], [136, 600], [1024, 1100], [264, 2200]]) {
        const w = randn(rng, out * inDim, 0.1);
        const wc = cpu.weight(host(w, [out, inDim]));
        const wg = g().weight(host(w, [out, inDim]));
        const x = randn(rng, 8 * inDim);
        const single: Float32Array[] = [];
        for (const n of [1, 2, 3, 5, 8]) {
          g().beginStep();
          const xs = x.subarray(0, n * inDim);
          const want = cpu.linear(new CpuTensor([n, inDim], xs.slice()), wc).data;
          const xg = g().upload(xs, [n, inDim], precision);
          const got = g().toHost(g().linear(xg, wg));
          close(got, want, tol, `gemv ${n}×${inDim}→${out}`);
          const got32 = g().toHost(g().linear(xg, wg, { outF32: true }));
          close(got32, want, tol, `gemv fp32 out ${n}×${inDim}→${out}`);
          single.push(got32.slice(0, out));
        }
        // Row 0 is the same computation in every batch: the same bits (CUDA-graph padding relies on it).
        for (const [i, s] of single.entries()) identical(s, single[0], `gemv row 0, batch #${i} vs batch 1 (${inDim}→${out})`);
      }
      assert.equal(g().stats().fallbackGemms, 0);
    });

    test("linearMany (q, k, v in one GEMV launch) matches separate linears", () => {
      const inDim = 256;
      const sizes = [600, 136, 72];
      const ws = sizes.map((o) => randn(rng, o * inDim, 0.1));
      const wg = ws.map((w, i) => g().weight(host(w, [sizes[i], inDim])));
      for (const n of [1, 3, 4, 6]) {
        for (const count of [3, 2]) {
          g().beginStep();
          const x = randn(rng, n * inDim);
          const xg = g().upload(x, [n, inDim], precision);
          const got = g().linearMany(xg, wg.slice(0, count));
          assert.equal(got.length, count);
          for (let i = 0; i < count; i++) {
            const want = cpu.linear(new CpuTensor([n, inDim], x.slice()), cpu.weight(host(ws[i], [sizes[i], inDim]))).data;
            close(g().toHost(got[i]), want, tol, `linearMany ${n} rows, weight ${i} of ${count}`);
          }
        }
      }
    });

    // Scout's q, k, v rows on one rank of four (4 rows a block, two K parts a row) and of eight (2 rows, four K parts).
    for (const [ranks, sizes] of [[4, [1280, 256, 256]], [8, [640, 128, 128]]] as const) {
      test(`linearMany at a tp-${ranks} rank's q/k/v shapes: one token (staged in shared memory on sm_90) gives the bits of row 0 of larger batches`, () => {
        const inDim = 5120;
        const ws = sizes.map((o) => randn(rng, o * inDim, 0.02));
        const wg = ws.map((w, i) => g().weight(host(w, [sizes[i], inDim])));
        const x = randn(rng, 3 * inDim);
        const rows0: Float32Array[][] = [];
        for (const n of [1, 2, 3]) {
          g().beginStep();
          const staged = g().stats().stagedGemvs;
          const got = g().linearMany(g().upload(x.subarray(0, n * inDim), [n, inDim], precision), wg);
          const sm90bf16 = g().info.ccMajor === 9 && precision === "bf16";
          assert.equal(g().stats().stagedGemvs - staged, n === 1 && sm90bf16 ? 1 : 0, `${n} rows: staged launches`);
          rows0.push(got.map((t, i) => g().toHost(t).slice(0, sizes[i])));
          if (n === 1) {
            for (const [i, r] of rows0[0].entries()) {
              close(r, cpu.linear(new CpuTensor([1, inDim], x.slice(0, inDim)), cpu.weight(host(ws[i], [sizes[i], inDim]))).data, tol, `q/k/v part ${i}, one token`);
            }
          }
        }
        for (let b = 1; b < rows0.length; b++) {
          for (let i = 0; i < sizes.length; i++) identical(rows0[b][i], rows0[0][i], `q/k/v part ${i}: row 0 of batch ${b + 1} vs one token`);
        }
      });
    }

    test("queueGreedy (greedy on the device): the host argmax, lowest index on ties; large downloads through pinned staging", () => {
      // 3001 columns: rows off 16-byte alignment (element by element); 3008 and 20000: 16-byte
      // vectors (20000: several a thread, loaded together), with ties inside one vector, across
      // threads and across one thread's vectors (43 and 43 + 8·1024: thread 5 in bf16, 10 in fp32).
      for (const cols of [3001, 3008, 20000]) {
        const n = 6;
        const x = randn(rng, n * cols);
        x[1 * cols + 7] = 9;
        x[1 * cols + 2000] = 9; // a tie: the lower index wins
        x[3 * cols + cols - 1] = 10;
        x[4 * cols + 9] = x[4 * cols + 10] = 11; // one vector
        x[5 * cols + 2050] = x[5 * cols + 17] = 12; // other threads
        if (cols > 8235) x[4 * cols + 8235] = x[4 * cols + 43] = 13; // one thread, two vectors
        g().beginStep();
        const xg = g().upload(x, [n, cols], precision);
        const want = Array.from({ length: n }, (_, r) => {
          let best = 0;
          for (let i = 1; i < cols; i++) if (x[r * cols + i] > x[r * cols + best]) best = i;
          return best;
        });
        assert.deepEqual(Array.from(g().queueGreedy(xg).wait()), want, `${cols} columns`);
      }
      // ≥ 256 KiB: the page-locked staging path of toHost, both storage types.
      const big = randn(rng, 300 * 1024);
      for (const dtype of ["f32", "bf16"] as const) {
        g().beginStep();
        const got = g().toHost(g().upload(big, [300, 1024], dtype));
        identical(got, big, `toHost ${dtype} through pinned staging`);
        const again = g().toHost(g().upload(big.subarray(0, 200 * 1024), [200, 1024], dtype));
        identical(again, big.subarray(0, 200 * 1024), `toHost ${dtype} reusing the staging buffer`);
      }
    });

    for (const [n, e, slice] of [[1, 4, false], [3, 4, false], [8, 16, false], [5, 4, true], [13, 16, false], [64, 16, false], [64, 4, true]] as const) {
      test(`device MoE, ${n} tokens, ${e} experts${slice ? ", experts 1–2 on this rank" : ""}: vs the CPU and the host-sorted path`, () => {
        const d = 128, f = 64, fs = 96; // the shared expert narrower than the routed ones (as under TP with EP)
        const x = randn(rng, n * d);
        const router = randn(rng, e * d, 0.5);
        const gateUp = randn(rng, e * 2 * f * d, 0.15);
        const down = randn(rng, e * d * f, 0.15);
        const sGateUp = randn(rng, 2 * fs * d, 0.15);
        const sDown = randn(rng, d * fs, 0.15);
        const [first, local] = slice ? [1, 2] : [0, e];
        const part = (a: Float32Array, per: number) => a.slice(first * per, (first + local) * per);
        const load = (be: CpuBackend | CudaBackend) => ({
          router: be.weight(host(router, [e, d])),
          gateUp: be.weight(host(part(gateUp, 2 * f * d), [local, 2 * f, d])),
          down: be.weight(host(part(down, d * f), [local, d, f])),
          sharedGateUp: be.weight(host(sGateUp, [2 * fs, d])),
          sharedDown: be.weight(host(sDown, [d, fs])),
          numExperts: e,
          expertStart: first,
        });
        const want = cpu.moe(new CpuTensor([n, d], x.slice()), load(cpu)).data;
        g().beginStep();
        const got = g().toHost(g().moe(g().upload(x, [n, d], precision), load(g())));
        hostMoe ??= backend(precision, { moeDeviceMaxTokens: 0 });
        hostMoe.beginStep();
        const ref = hostMoe.toHost(hostMoe.moe(hostMoe.upload(x, [n, d], precision), load(hostMoe)));
        // Rows whose top-2 router logits nearly tie may route differently under bf16; compare the clear ones.
        const logits = cpu.linear(new CpuTensor([n, d], x.slice()), cpu.weight(host(router, [e, d]))).data;
        const keep: number[] = [];
        for (let r = 0; r < n; r++) {
          const l = Array.from(logits.subarray(r * e, (r + 1) * e)).sort((a, b) => b - a);
          if (precision === "f32" || l[0] - l[1] > 0.05) keep.push(r);
        }
        const pick = (a: Float32Array) => Float32Array.from(keep.flatMap((r) => Array.from(a.subarray(r * d, (r + 1) * d))));
        assert.ok(keep.length >= Math.ceil(n / 2), `only ${keep.length} of ${n} rows have a clear routing`);
        close(pick(got), pick(want), tol, `device moe vs cpu (${keep.length}/${n} rows)`);
        close(pick(got), pick(ref), tol, `device moe vs host-sorted moe (${keep.length}/${n} rows)`);
        close(got, got, 1, "device moe: every element written"); // NaN check (poisoned arena)
      });
    }
  });
}

// ---- CUDA graphs: decode steps replayed from a graph give the same logits as direct ones ----

for (const precision of ["f32", "bf16"] as const) {
  for (const [name, hybridKv] of [["scout-tiny", false], ["maverick-tiny", true]] as const) {
    describe(`CUDA-graph decode, ${name}${hybridKv ? " (hybrid KV pools)" : ""} (${precision})`, { skip }, () => {
      const dir = fixturePath(name);
      let made: CudaBackend[] = [];
      const cleanup = () => {
        made.forEach((b) => b.destroy());
        made = [];
      };
      after(cleanup);

      /** Prefill `batch` prompts, then `steps` decode steps on fixed tokens; every step's logits. */
      async function run(opts: CudaBackendOptions, batch: number, steps: number): Promise<{ logits: Float32Array[]; be: CudaBackend }> {
        const be = backend(precision, opts);
        made.push(be);
        const { model, config } = await loadModel(dir, be, { hybridKv });
        const seqs = new ContiguousBatch(model, batch, 64);
        const prompts = Array.from({ length: batch }, (_, b) => Array.from({ length: 9 + 3 * b }, (_, i) => (b * 31 + i * 17 + 5) % config.vocabSize));
        const logits = [seqs.append(prompts)];
        for (let s = 0; s < steps; s++) logits.push(seqs.append(Array.from({ length: batch }, (_, b) => [(s * 13 + b * 7 + 1) % config.vocabSize])));
        return { logits, be };
      }

      for (const batch of [1, 3]) {
        test(`batch ${batch}${batch === 3 ? " (padded to 4)" : ""}: graph replays identical to direct steps`, async () => {
          const steps = 6;
          const direct = await run({ graphSizes: [] }, batch, steps);
          const graphed = await run({ graphSizes: [1, 2, 4, 8] }, batch, steps);
          const st = graphed.be.graphStats;
          assert.equal(st.off, "", `graphs were turned off: ${st.off}`);
          assert.equal(st.captures, 1, "one capture for the one batch size");
          assert.equal(st.replays, steps);
          assert.equal(direct.be.graphStats.replays, 0);
          for (let s = 0; s <= steps; s++) identical(graphed.logits[s], direct.logits[s], `${s === 0 ? "prefill" : `decode step ${s}`}`);
          cleanup();
        });
      }

      test("one graph size, slot-table appends of different sizes (steps re-sending older slots): replays identical to direct steps", async () => {
        // A step's appends are staged ahead of the attention tiles; at one graph size they vary
        // (a step may carry slots from before its new token), and the tiles must still be where
        // the captured graph reads them.
        // bf16 on sm_80+: the fa3 kernels, whose tile tables are what follows the appends.
        const fa3 = precision === "bf16" && probe.ok && probe.info.ccMajor >= 8;
        const runResend = async (graphSizes: number[]) => {
          const be = backend(precision, { graphSizes, ...(fa3 ? { attention: "fa3" as const } : {}) });
          made.push(be);
          const { model, config } = await loadModel(dir, be, { hybridKv });
          const capacity = 96;
          model.allocKv({ full: 2 * capacity, swa: 2 * capacity, rows: 2, context: capacity });
          const slots = [0, 1].map((b) => Int32Array.from({ length: capacity }, (_, i) => b * capacity + ((i * 37) % capacity)));
          const lens = [0, 0];
          const step = (tokens: number[][], resend: number): Float32Array => {
            const ids: number[] = [], positions: number[] = [], seqs: SeqSpan[] = [];
            tokens.forEach((t, b) => {
              const kvLen = lens[b] + t.length;
              const from = Math.max(0, lens[b] - resend);
              seqs.push({ qStart: ids.length, qLen: t.length, kvLen, row: b, slotsFrom: from, fullSlots: slots[b].subarray(from, kvLen), swaSlots: slots[b].subarray(from, kvLen) });
              t.forEach((id, i) => (ids.push(id), positions.push(lens[b] + i)));
              lens[b] = kvLen;
            });
            let row = 0;
            const logitRows = tokens.map((t) => (row += t.length) - 1);
            return model.forward({ ids: Int32Array.from(ids), positions: Int32Array.from(positions), seqs, logitRows: Int32Array.from(logitRows) });
          };
          const vocab = config.vocabSize;
          const logits = [step([0, 1].map((b) => Array.from({ length: 50 + 3 * b }, (_, i) => (b * 23 + i * 11 + 3) % vocab)), 0)];
          // 2 or 2 + 2·40 slots a step (every 256 bytes of appends moves what follows them)
          for (let s = 0; s < 6; s++) logits.push(step([0, 1].map((b) => [(s * 7 + b * 5 + 2) % vocab]), s % 2 === 1 ? 40 : 0));
          return { logits, be };
        };
        const direct = await runResend([]);
        const graphed = await runResend([1, 2, 4, 8]);
        const st = graphed.be.graphStats;
        assert.equal(st.off, "", `graphs were turned off: ${st.off}`);
        assert.equal(st.replays, 6, "every decode step replayed the size-2 graph");
        for (let s = 0; s <= 6; s++) {
          const what = `${fa3 ? "fa3, " : ""}${s === 0 ? "prefill" : `decode step ${s}${s % 2 === 0 ? "" : " (re-sending 40 slots)"}`}`;
          // fa3 as in its graph test below: a replay's split counts may differ from a direct step's
          if (fa3) close(graphed.logits[s], direct.logits[s], 1e-2, what);
          else identical(graphed.logits[s], direct.logits[s], what);
        }
        cleanup();
      });

      test("greedy on the device (forwardArgmax) picks the host argmax of the same logits, graphs on and off", async () => {
        for (const graphSizes of [[], [1, 2, 4, 8]]) {
          const be = backend(precision, { graphSizes });
          made.push(be);
          const { model, config } = await loadModel(dir, be, { hybridKv });
          const vocab = config.vocabSize;
          const prompts = [0, 1, 2].map((b) => Array.from({ length: 7 + 2 * b }, (_, i) => (b * 29 + i * 13 + 3) % vocab));
          const step = (s: number) => [0, 1, 2].map((b) => [(s * 11 + b * 5 + 2) % vocab]);
          const host = new ContiguousBatch(model, 3, 32);
          host.append(prompts);
          const want: number[][] = [];
          for (let s = 0; s < 4; s++) {
            const l = host.append(step(s));
            want.push([0, 1, 2].map((r) => {
              let best = 0;
              for (let i = 1; i < vocab; i++) if (l[r * vocab + i] > l[r * vocab + best]) best = i;
              return best;
            }));
          }
          const dev = new ContiguousBatch(model, 3, 32);
          dev.append(prompts);
          for (let s = 0; s < 4; s++) assert.deepEqual(Array.from(dev.appendGreedy(step(s))), want[s], `step ${s}, graph sizes [${graphSizes}]`);
          if (graphSizes.length > 0) assert.equal(be.graphStats.off, "");
        }
        cleanup();
      });

      test("pipelined greedy (each step's ids the last step's picks, on the device) equals step-by-step greedy, graphs on and off", async () => {
        for (const graphSizes of [[], [1, 2, 4, 8]]) {
          const be = backend(precision, { graphSizes });
          made.push(be);
          const { model, config } = await loadModel(dir, be, { hybridKv });
          const prompts = [0, 1, 2].map((b) => Array.from({ length: 7 + 2 * b }, (_, i) => (b * 29 + i * 13 + 3) % config.vocabSize));
          const run = (pipelined: boolean) => {
            const seqs = new ContiguousBatch(model, 3, 32);
            let ids = seqs.appendGreedy(prompts);
            const out = [Array.from(ids)];
            if (!pipelined) {
              for (let s = 0; s < 6; s++) out.push(Array.from((ids = seqs.appendGreedy(Array.from(ids, (id) => [id])))));
              return out;
            }
            let picks = seqs.queueGreedy(Array.from(ids));
            for (let s = 0; s < 6; s++) {
              const next = s + 1 < 6 ? seqs.queueGreedy(picks) : null;
              out.push(Array.from(picks.wait()));
              if (next) picks = next;
            }
            return out;
          };
          const replays = be.graphStats.replays;
          assert.deepEqual(run(true), run(false), `graph sizes [${graphSizes}]`);
          if (graphSizes.length > 0) assert.ok(be.graphStats.replays - replays >= 12 && be.graphStats.off === "", "the steps replayed graphs");
        }
        cleanup();
      });

      test("pipelined sampling (each step's ids the last step's draws, on the device) equals step-by-step sampling, graphs on and off", async () => {
        for (const graphSizes of [[], [1, 2, 4, 8]]) {
          const be = backend(precision, { graphSizes });
          made.push(be);
          const { model } = await loadModel(dir, be, { hybridKv });
          const r = sampledRuns(model, readGolden(dir));
          assert.deepEqual(r.pipelined, r.stepwise, `graph sizes [${graphSizes}]`);
        }
        cleanup();
      });

      if (precision === "bf16") {
        test("fa3 attention under graphs: replays match direct steps (split counts may differ: close, not identical)", async (t) => {
          if (!probe.ok || probe.info.ccMajor < 8) return t.skip("fa3 needs sm_80+");
          const steps = 5;
          const direct = await run({ graphSizes: [], attention: "fa3" }, 3, steps);
          const graphed = await run({ graphSizes: [4], attention: "fa3" }, 3, steps);
          assert.equal(graphed.be.graphStats.off, "", `graphs were turned off: ${graphed.be.graphStats.off}`);
          assert.equal(graphed.be.graphStats.replays, steps);
          for (let s = 0; s <= steps; s++) close(graphed.logits[s], direct.logits[s], 1e-2, `fa3 step ${s}`);
          cleanup();
        });
      }
    });
  }
}
