#!/usr/bin/env python3
"""Golden references for tsglang: tiny random Llama 4 checkpoints in the Hugging Face hub layout
and transformers' float64 outputs on them.

Run on a machine with PyTorch, transformers 5.x, tokenizers and safetensors (the GPU machine):
    python3 tools/make_fixtures.py --out test/fixtures

For each fixture it writes, into OUT/<name>/:
  config.json              hub form (Llama4ForConditionalGeneration, nested text_config)
  model.safetensors        bf16 weights under hub names (language_model.model.layers.N...)
  tokenizer.json, tokenizer_config.json, generation_config.json
  reference.json           prompts, greedy continuations, top-2 margins, provenance
  logprobs.bin             float64 log-softmax rows, little-endian, for every position of each
                           prompt + continuation, prompts concatenated in reference.json order

The model is built as transformers' Llama4ForCausalLM, its weights rounded to bf16 (what the file
stores), then run in float64 with eager attention: the reference is the exact math of the stored
weights, not of bf16 arithmetic.
"""
import argparse
import json
import math
import os
import sys

import torch
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import Llama4ForCausalLM, Llama4TextConfig

SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
    "<|header_start|>", "<|header_end|>", "<|eom|>", "<|eot|>", "<|step|>",
    "<|python_start|>", "<|python_end|>", "<|finetune_right_pad|>", "<|image_start|>",
    "<|image_end|>", "<|image|>", "<|patch|>",
]

CORPUS = """
Llama 4 is a mixture of experts language model. Each token is routed to one expert and a shared
expert. Local attention layers look only at their own chunk of the sequence, while global layers
without rotary embeddings see the whole context. The quick brown fox jumps over the lazy dog.
Serving engines batch many requests together, cache their prefixes, and stream tokens back.
Once upon a time there was a small model that wanted to write real text. It read books about
rivers, mountains, cities and stars, and it learned to count: one, two, three, four, five.
""" * 4

PROMPTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Serving engines batch many requests together, cache their prefixes, and stream tokens back "
    "to the client while local attention layers look only at their own chunk.",
]

# Two shapes of the architecture; sizes divide by 2 and 4 so tensor/expert parallel runs can
# use the same fixtures. Small chunk and floor scale make chunking and temperature tuning act
# within short prompts.
FIXTURES = {
    "scout-tiny": dict(
        hidden_size=128, num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=4,
        head_dim=32, intermediate_size=128, intermediate_size_mlp=256, num_local_experts=4,
        interleave_moe_layer_step=1, use_qk_norm=True, attention_chunk_size=16,
        floor_scale=8, attn_scale=0.3, attn_temperature_tuning=True,
        # hub form: rope_theta + rope_scaling; low != high exercises llama3's middle band
        rope_theta=10000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=16),
    ),
    "maverick-tiny": dict(
        hidden_size=128, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4,
        head_dim=16, intermediate_size=128, intermediate_size_mlp=256, num_local_experts=8,
        interleave_moe_layer_step=2, moe_layers=[1, 3, 5], use_qk_norm=False,
        attention_chunk_size=16, floor_scale=8, attn_scale=0.3, attn_temperature_tuning=True,
        no_rope_layers=[1, 1, 0, 1, 1, 0],
        # transformers-5 form
        rope_parameters=dict(rope_type="default", rope_theta=500000.0),
    ),
}

COMMON = dict(
    model_type="llama4_text", vocab_size=512, num_experts_per_tok=1, hidden_act="silu",
    rms_norm_eps=1e-5, max_position_embeddings=4096, attention_bias=False,
    tie_word_embeddings=False, router_aux_loss_coef=0.001, router_jitter_noise=0.0,
)


def train_tokenizer(out_dir):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=512 - 0, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([CORPUS], trainer)
    bos = tok.token_to_id("<|begin_of_text|>")
    tok.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A $B:1",
        special_tokens=[("<|begin_of_text|>", bos)])
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    assert tok.get_vocab_size() <= 512, tok.get_vocab_size()
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump({
            "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot|>", "pad_token": "<|finetune_right_pad|>", "add_bos_token": True,
            "model_max_length": 4096,
        }, f, indent=2)
    return tok, ids


def init_weights(model, gen):
    """Random weights scaled so routing is decisive and logits are peaked."""
    cfg = model.config
    d = cfg.hidden_size
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=gen))
            elif "router" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * (2.0 / math.sqrt(d)))
            elif name.endswith("lm_head.weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * (6.0 / math.sqrt(d)))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:
                fan_in = p.shape[-2] if "experts" in name else p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) * (1.0 / math.sqrt(fan_in)))


def hub_config(name, text_cfg, ids):
    text = dict(COMMON, **text_cfg)
    text["bos_token_id"] = ids["<|begin_of_text|>"]
    text["eos_token_id"] = [ids["<|end_of_text|>"], ids["<|eom|>"], ids["<|eot|>"]]
    text["pad_token_id"] = ids["<|finetune_right_pad|>"]
    text["torch_dtype"] = "bfloat16"
    return {
        "architectures": ["Llama4ForConditionalGeneration"], "model_type": "llama4",
        "text_config": text, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "boi_token_index": ids["<|image_start|>"], "eoi_token_index": ids["<|image_end|>"],
        "image_token_index": ids["<|patch|>"],
        "_tsglang_fixture": name,
    }


def check_layout(model, text):
    sd = model.state_dict()
    e, d, f = text["num_local_experts"], text["hidden_size"], text["intermediate_size"]
    for i in range(text["num_hidden_layers"]):
        if i in model.config.moe_layers:
            gu = sd[f"model.layers.{i}.feed_forward.experts.gate_up_proj"]
            dn = sd[f"model.layers.{i}.feed_forward.experts.down_proj"]
            assert tuple(gu.shape) == (e, d, 2 * f), ("gate_up_proj layout", gu.shape)
            assert tuple(dn.shape) == (e, f, d), ("down_proj layout", dn.shape)


def expected_inv_freq(text):
    """llama4-spec.md §1.5.2, written independently of transformers."""
    params = text.get("rope_parameters") or {}
    theta = text.get("rope_theta", params.get("rope_theta"))
    sc = text.get("rope_scaling") or (params if params.get("rope_type", "default") != "default" else None)
    hd = text["head_dim"]
    inv = [1.0 / theta ** (2 * i / hd) for i in range(hd // 2)]
    if not sc:
        return inv
    lo = sc["original_max_position_embeddings"] / sc["low_freq_factor"]
    hi = sc["original_max_position_embeddings"] / sc["high_freq_factor"]
    out = []
    for f in inv:
        wl = 2 * math.pi / f
        if wl < hi:
            out.append(f)
        elif wl > lo:
            out.append(f / sc["factor"])
        else:
            mu = (sc["original_max_position_embeddings"] / wl - sc["low_freq_factor"]) / (sc["high_freq_factor"] - sc["low_freq_factor"])
            out.append((1 - mu) * f / sc["factor"] + mu * f)
    return out


def check_rope(model, text):
    got = model.model.rotary_emb.inv_freq.double()
    want = torch.tensor(expected_inv_freq(text), dtype=torch.float64)
    err = float((got - want).abs().max() / want.abs().max())
    print("rope inv_freq rel err", err, "params", getattr(model.config, "rope_parameters", None))
    assert err < 1e-5, (got, want)
    for i, layer in enumerate(model.model.layers):
        a = layer.self_attn
        print(f"  layer {i}: use_rope={getattr(a, 'use_rope', '?')} qk_norm={hasattr(a, 'qk_norm')} "
              f"temp={getattr(a, 'attn_temperature_tuning', '?')} moe={getattr(layer, 'is_moe_layer', '?')}")


def logprob_rows(model, ids):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]), use_cache=False)
    return torch.log_softmax(out.logits[0].double(), dim=-1)


def greedy(model, prompt, max_new, eos):
    ids = list(prompt)
    margins = []
    for _ in range(max_new):
        lp = logprob_rows(model, ids)[-1]
        top2 = torch.topk(lp, 2)
        margins.append(float(top2.values[0] - top2.values[1]))
        nxt = int(top2.indices[0])
        ids.append(nxt)
        if nxt in eos:
            break
    return ids[len(prompt):], margins


def make_fixture(name, text_cfg, out_root, seed):
    out = os.path.join(out_root, name)
    os.makedirs(out, exist_ok=True)
    tok, ids = train_tokenizer(out)
    cfg_json = hub_config(name, text_cfg, ids)
    text = cfg_json["text_config"]
    cfg = Llama4TextConfig(**{k: v for k, v in text.items() if k not in ("model_type", "torch_dtype")})
    cfg._attn_implementation = "eager"
    check_rope(Llama4ForCausalLM(cfg), text)
    for attempt in range(20):
        gen = torch.Generator().manual_seed(seed + attempt)
        model = Llama4ForCausalLM(cfg).eval()
        check_layout(model, text)
        init_weights(model, gen)
        # Round the parameters to what the file stores, then compute in float64. (Not
        # model.to(bfloat16): that would also round the RoPE inv_freq buffer.)
        state = {k: v.to(torch.bfloat16).contiguous() for k, v in model.state_dict().items()}
        model = model.to(torch.float64)
        model.load_state_dict({k: v.to(torch.float64) for k, v in state.items()}, strict=True)
        check_rope(model, text)
        prompts = [tok.encode(p).ids for p in PROMPTS]
        g = torch.Generator().manual_seed(seed + 1000 + attempt)
        prompts.append([ids["<|begin_of_text|>"]] + torch.randint(0, 512, (70,), generator=g).tolist())
        eos = set(text["eos_token_id"])
        results, min_margin = [], float("inf")
        for p in prompts:
            cont, margins = greedy(model, p, 16, eos)
            min_margin = min(min_margin, min(margins))
            results.append((p, cont, margins))
        if min_margin > 0.02:
            break
        print(f"{name}: seed {seed + attempt} has greedy top-2 margin {min_margin:.4g}; retrying")
    else:
        sys.exit(f"{name}: no seed gave clear greedy margins")

    # Hub layout: the text model's tensors under `language_model.`.
    hub_state = {f"language_model.{k}": v for k, v in state.items()}
    save_file(hub_state, os.path.join(out, "model.safetensors"), metadata={"format": "pt"})
    reloaded = load_file(os.path.join(out, "model.safetensors"))
    fresh = Llama4ForCausalLM(cfg)
    fresh.load_state_dict({k[len("language_model."):]: v for k, v in reloaded.items()}, strict=True)

    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg_json, f, indent=2)
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": text["bos_token_id"], "eos_token_id": text["eos_token_id"],
                   "pad_token_id": text["pad_token_id"], "do_sample": False}, f, indent=2)

    rows, entries = [], []
    for (p, cont, margins), text_prompt in zip(results, PROMPTS + [None]):
        seq = p + cont
        lp = logprob_rows(model, seq)
        rows.append(lp)
        entries.append({
            "text": text_prompt, "prompt_ids": p, "greedy_ids": cont,
            "greedy_text": tok.decode(cont, skip_special_tokens=False),
            "greedy_top2_margins": margins, "positions": len(seq),
        })
    torch.cat(rows).numpy().astype("<f8").tofile(os.path.join(out, "logprobs.bin"))
    import transformers
    with open(os.path.join(out, "reference.json"), "w") as f:
        json.dump({
            "fixture": name, "seed": seed + attempt, "vocab_size": text["vocab_size"],
            "transformers": transformers.__version__, "torch": torch.__version__,
            "dtype": "float64 compute from bf16-rounded weights, eager attention",
            "logprobs_file": "logprobs.bin (float64 LE, rows = positions of prompt+greedy, per prompt)",
            "min_greedy_top2_margin": min_margin, "prompts": entries,
        }, f, indent=1)
    print(f"{name}: seed {seed + attempt}, min greedy margin {min_margin:.3f}, "
          f"{sum(r.shape[0] for r in rows)} positions, "
          f"moe_layers {cfg.moe_layers}, no_rope_layers {cfg.no_rope_layers}")
    for e in entries:
        print("  ", len(e["prompt_ids"]), "->", e["greedy_ids"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="test/fixtures")
    ap.add_argument("--seed", type=int, default=1234)
    args = ap.parse_args()
    torch.set_grad_enabled(False)
    for i, (name, cfg) in enumerate(FIXTURES.items()):
        make_fixture(name, cfg, args.out, args.seed + 100 * i)


if __name__ == "__main__":
    main()
