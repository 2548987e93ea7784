import assert from "node:assert/strict";
import { test } from "node:test";
import { ConfigError, attentionTemperature, parseConfig, ropeInvFreq } from "./config.js";

// Scout's text_config as on the hub (llama4-spec.md §2.2), nested in the conditional form.
const scoutText = {
  model_type: "llama4_text",
  hidden_size: 5120,
  num_hidden_layers: 48,
  num_attention_heads: 40,
  num_key_value_heads: 8,
  head_dim: 128,
  intermediate_size: 8192,
  intermediate_size_mlp: 16384,
  num_local_experts: 16,
  num_experts_per_tok: 1,
  interleave_moe_layer_step: 1,
  vocab_size: 202048,
  rms_norm_eps: 1e-5,
  rope_theta: 500000.0,
  rope_scaling: { rope_type: "llama3", factor: 16.0, low_freq_factor: 1.0, high_freq_factor: 1.0, original_max_position_embeddings: 8192 },
  max_position_embeddings: 10485760,
  attention_chunk_size: 8192,
  use_qk_norm: true,
  attn_temperature_tuning: 4,
  floor_scale: 8192,
  attn_scale: 0.1,
  eos_token_id: [200001, 200007, 200008],
};
const scout = { architectures: ["Llama4ForConditionalGeneration"], model_type: "llama4", text_config: scoutText };

test("Scout: layer schedule from the every-4th rule", () => {
  const c = parseConfig(structuredClone(scout));
  assert.equal(c.layout, "conditional");
  assert.equal(c.layers.length, 48);
  const nope = c.layers.filter((l) => !l.rope).map((l) => l.index);
  assert.deepEqual(nope, [3, 7, 11, 15, 19, 23, 27, 31, 35, 39, 43, 47]);
  for (const l of c.layers) {
    assert.equal(l.chunkSize, l.rope ? 8192 : 0, `layer ${l.index} chunk`);
    assert.equal(l.qkNorm, l.rope, `layer ${l.index} qk-norm only on RoPE layers`);
    assert.equal(l.temperatureTuning, !l.rope, `layer ${l.index} temperature tuning only on NoPE layers`);
    assert.equal(l.moe, true);
  }
  assert.deepEqual(c.eosTokenIds, [200001, 200007, 200008]);
});

test("Scout: llama3 RoPE scaling divides pairs 35..63 by 16 and keeps 0..34", () => {
  const c = parseConfig(structuredClone(scout));
  const scaled = ropeInvFreq(c);
  const plain = ropeInvFreq({ ...c, ropeScaling: null });
  for (let i = 0; i < 64; i++) {
    const want = i <= 34 ? plain[i] : Math.fround(plain[i] / 16);
    assert.equal(scaled[i], want, `pair ${i}`);
  }
});

test("temperature tuning τ(p) values from the spec", () => {
  const c = parseConfig(structuredClone(scout));
  assert.equal(attentionTemperature(c, 8190), 1);
  assert.ok(Math.abs(attentionTemperature(c, 8191) - 1.0693147) < 1e-6);
  assert.ok(Math.abs(attentionTemperature(c, 1048575) - 1.486) < 1e-3);
});

test("Maverick-like flat config with rope_parameters and explicit moe_layers / no_rope_layers", () => {
  const c = parseConfig({
    ...scoutText,
    rope_theta: undefined,
    rope_scaling: undefined,
    rope_parameters: { rope_type: "default", rope_theta: 500000.0 },
    use_qk_norm: false,
    num_hidden_layers: 4,
    interleave_moe_layer_step: 2,
    moe_layers: [0, 3], // wins over the step rule
    no_rope_layers: [1, 0, 1, 1],
  });
  assert.equal(c.layout, "causal");
  assert.equal(c.ropeScaling, null);
  assert.equal(c.ropeTheta, 500000);
  assert.deepEqual(c.layers.map((l) => l.moe), [true, false, false, true]);
  assert.deepEqual(c.layers.map((l) => l.rope), [true, false, true, true]);
  assert.deepEqual(c.layers.map((l) => l.qkNorm), [false, false, false, false]);
});

test("bad or contradictory fields are errors that name the field", () => {
  const bad: [Record<string, unknown>, RegExp][] = [
    [{ hidden_size: "5120" }, /text_config\.hidden_size/],
    [{ num_key_value_heads: 7 }, /text_config\.num_key_value_heads/],
    [{ no_rope_layers: [1, 1, 0] }, /text_config\.no_rope_layers/],
    [{ moe_layers: [0, 99] }, /text_config\.moe_layers/],
    [{ num_experts_per_tok: 2 }, /text_config\.num_experts_per_tok/],
    [{ rope_scaling: { rope_type: "yarn", factor: 4 } }, /rope_scaling\.rope_type/],
    [{ rope_scaling: { rope_type: "llama3", factor: 16 } }, /rope_scaling\.low_freq_factor/],
    [{ rope_parameters: { rope_type: "default", rope_theta: 10000 } }, /text_config\.rope_theta/],
    [{ use_qk_norm: "yes" }, /text_config\.use_qk_norm/],
    [{ hidden_act: "gelu" }, /text_config\.hidden_act/],
  ];
  for (const [patch, re] of bad) {
    const cfg = { ...scout, text_config: { ...scoutText, ...patch } };
    assert.throws(() => parseConfig(cfg), (e: unknown) => e instanceof ConfigError && re.test(e.message), JSON.stringify(patch));
  }
  assert.throws(() => parseConfig({ model_type: "llama" }), /model_type/);
});
