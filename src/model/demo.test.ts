// The bundled demo model (models/llama4-demo) reproduces the held-out perplexity its model card
// reports, computed there with transformers, and beats the card's unigram baseline by far.

import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";
import { Tokenizer } from "../tokenizer/tokenizer.js";
import { defaultModelPath } from "../util/repo.js";
import { perplexity } from "./perplexity.js";

test("demo model: held-out perplexity within 1% of the model card, well under the unigram baseline", async () => {
  const dir = defaultModelPath();
  const card = JSON.parse(readFileSync(join(dir, "eval.json"), "utf8")).eval;
  const readme = readFileSync(join(dir, "README.md"), "utf8");
  assert.ok(readme.includes(card.heldout.ppl.toFixed(4)), "README states the same perplexity as eval.json");
  const tok = await Tokenizer.load(dir);
  const ids = tok.encode(readFileSync(join(dir, "heldout.txt"), "utf8"), { addSpecialTokens: false });
  assert.equal(ids.length, card.heldout.tokens);
  const r = await perplexity(dir, ids, tok.bosId!, card.heldout.window);
  assert.equal(r.windows, card.heldout.windows);
  const rel = Math.abs(r.ppl - card.heldout.ppl) / card.heldout.ppl;
  assert.ok(rel < 0.01, `ppl ${r.ppl} vs card ${card.heldout.ppl} (${(rel * 100).toFixed(3)}%)`);
  assert.ok(r.ppl < card.unigram.ppl / 3, `ppl ${r.ppl} vs unigram ${card.unigram.ppl}`);
});
