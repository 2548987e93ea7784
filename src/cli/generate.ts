// `tsglang generate`: one prompt through the model on a contiguous KV cache, printed as text
// or (--json) as one object with ids, text and timing. Temperature 0 is greedy.

import { parseArgs } from "node:util";
import { SingleSequence } from "../engine/sequence.js";
import { GREEDY, Rng, sampleToken, type SamplingParams } from "../engine/sampling.js";
import { loadModel } from "../model/loader.js";
import { createBackend, parseAttentionBackend, parseDevice } from "../runtime/select.js";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import { IncrementalDetokenizer } from "../tokenizer/detokenizer.js";
import { defaultModelPath } from "../util/repo.js";

const HELP = `usage: tsglang generate [--model-path DIR] (--prompt TEXT | --input-ids 1,2,3) [flags]

  --model-path DIR        Hugging Face checkpoint directory (default: the bundled demo model)
  --tokenizer-path DIR    tokenizer directory, if not the checkpoint's
  --prompt TEXT           prompt text (tokenised with the checkpoint's tokenizer, BOS added)
  --input-ids LIST        prompt as comma-separated token ids (used as given)
  --max-new-tokens N      tokens to generate (default 32)
  --temperature T         0 = greedy (default 0)
  --top-p P               nucleus sampling (default 1)
  --top-k K               top-k sampling, -1 = off (default -1)
  --seed S                sampling seed
  --ignore-eos            keep generating past end-of-sequence tokens
  --device D              auto | cuda | cpu (default auto: a CUDA GPU when there is one)
  --attention-backend A   auto | fa3 | cuda | cpu (default auto)
  --json                  print one JSON object: input_ids, output_ids, text, finish_reason, timing`;

function num(name: string, v: string | undefined, dflt: number, check: (x: number) => boolean, what: string): number {
  if (v === undefined) return dflt;
  const x = Number(v);
  if (v.trim() === "" || !Number.isFinite(x) || !check(x)) throw new Error(`--${name} must be ${what}, got '${v}'`);
  return x;
}

export async function main(argv: string[]): Promise<number> {
  // parseArgs reads "-1" as a flag; bind negative numbers to the flag before them.
  const args = argv.flatMap((a, i) => (/^-\d/.test(a) && argv[i - 1]?.startsWith("--") ? [] : /^-\d/.test(argv[i + 1] ?? "") && a.startsWith("--") ? [`${a}=${argv[i + 1]}`] : [a]));
  const { values } = parseArgs({
    args,
    strict: true,
    options: {
      "model-path": { type: "string" },
      "tokenizer-path": { type: "string" },
      prompt: { type: "string" },
      "input-ids": { type: "string" },
      "max-new-tokens": { type: "string" },
      temperature: { type: "string" },
      "top-p": { type: "string" },
      "top-k": { type: "string" },
      seed: { type: "string" },
      "ignore-eos": { type: "boolean" },
      device: { type: "string", default: "auto" },
      "attention-backend": { type: "string", default: "auto" },
      json: { type: "boolean" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    console.log(HELP);
    return 0;
  }
  if ((values.prompt === undefined) === (values["input-ids"] === undefined)) {
    throw new Error("give exactly one of --prompt or --input-ids");
  }
  const maxNew = num("max-new-tokens", values["max-new-tokens"], 32, (x) => Number.isInteger(x) && x >= 0, "a non-negative integer");
  const sampling: SamplingParams = {
    ...GREEDY,
    temperature: num("temperature", values.temperature, 0, (x) => x >= 0, "≥ 0"),
    topP: num("top-p", values["top-p"], 1, (x) => x > 0 && x <= 1, "in (0, 1]"),
    topK: num("top-k", values["top-k"], -1, (x) => Number.isInteger(x) && (x === -1 || x >= 1), "-1 or a positive integer"),
    seed: values.seed === undefined ? undefined : num("seed", values.seed, 0, Number.isInteger, "an integer"),
  };

  const modelPath = values["model-path"] ?? defaultModelPath();
  const t0 = performance.now();
  const choice = await createBackend(parseDevice(values.device!), parseAttentionBackend(values["attention-backend"]!));
  const { model, config } = await loadModel(modelPath, choice.backend);
  const tokenizer = values.prompt !== undefined || !values.json ? await Tokenizer.load(values["tokenizer-path"] ?? modelPath) : null;
  const inputIds =
    values.prompt !== undefined
      ? tokenizer!.encode(values.prompt)
      : values["input-ids"]!.split(",").map((s) => {
          const id = Number(s.trim());
          if (!Number.isInteger(id) || id < 0 || id >= config.vocabSize) {
            throw new Error(`--input-ids: '${s}' is not a token id in [0, ${config.vocabSize})`);
          }
          return id;
        });
  if (inputIds.length === 0) throw new Error("the prompt is empty");
  const stop = new Set(values["ignore-eos"] ? [] : [...config.eosTokenIds, ...(tokenizer?.eosIds ?? [])]);

  const seq = new SingleSequence(model, inputIds.length + maxNew);
  const rng = new Rng(sampling.seed);
  const detok = tokenizer && !values.json ? new IncrementalDetokenizer(tokenizer) : null;
  const t1 = performance.now();
  const output: number[] = [];
  let finish = "length";
  let prefillMs = 0;
  if (maxNew > 0) {
    let logits = seq.append(inputIds);
    prefillMs = performance.now() - t1;
    for (;;) {
      const tok = sampleToken(logits, sampling, rng);
      output.push(tok);
      if (detok) process.stdout.write(detok.push(tok));
      if (stop.has(tok)) {
        finish = "stop";
        break;
      }
      if (output.length >= maxNew) break;
      logits = seq.append([tok]);
    }
  }
  const t2 = performance.now();
  const decodeMs = t2 - t1 - prefillMs;
  if (values.json) {
    const tok = tokenizer ?? (await Tokenizer.load(values["tokenizer-path"] ?? modelPath).catch(() => null));
    console.log(
      JSON.stringify({
        input_ids: inputIds,
        output_ids: output,
        text: tok ? tok.decode(output, { skipSpecialTokens: true }) : null,
        finish_reason: finish,
        timing: {
          load_s: (t1 - t0) / 1000,
          prefill_s: prefillMs / 1000,
          decode_s: decodeMs / 1000,
          decode_tokens_per_s: output.length > 1 ? (output.length - 1) / (decodeMs / 1000) : null,
        },
        backend: choice.description,
      }),
    );
  } else {
    if (detok) process.stdout.write(detok.flush());
    process.stdout.write("\n");
  }
  return 0;
}
