#!/usr/bin/env python3
"""Debug aid: per-layer hidden states and attention weights of a fixture (float64), as JSON."""
import json, sys
import torch
from safetensors.torch import load_file
from transformers import Llama4ForCausalLM, Llama4TextConfig

d = sys.argv[1]
cfgj = json.load(open(f"{d}/config.json"))["text_config"]
cfg = Llama4TextConfig(**{k: v for k, v in cfgj.items() if k not in ("model_type", "torch_dtype")})
cfg._attn_implementation = "eager"
m = Llama4ForCausalLM(cfg)
sd = load_file(f"{d}/model.safetensors")
m.load_state_dict({k[len("language_model."):]: v for k, v in sd.items()})
m = m.to(torch.float64).eval()
print("attn impl", m.config._attn_implementation, m.model.layers[0].self_attn.config._attn_implementation)
ref = json.load(open(f"{d}/reference.json"))
ids = ref["prompts"][0]["prompt_ids"]
with torch.no_grad():
    out = m(input_ids=torch.tensor([ids]), output_hidden_states=True, output_attentions=True, use_cache=False)
res = {"hidden": [h[0].tolist() for h in out.hidden_states],
       "attn0": out.attentions[0][0].tolist() if out.attentions else None}
json.dump(res, open(sys.argv[2], "w"))
print("layers", len(out.hidden_states), "attn", None if out.attentions is None else out.attentions[0].shape)
