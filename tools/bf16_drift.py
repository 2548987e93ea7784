#!/usr/bin/env python3
"""How far bf16 arithmetic moves logprobs from the exact math, measured on transformers itself.

The golden fixtures' references are float64 computations of bf16-stored weights. This script
runs transformers' own Llama 4 on the same weights and prompts in bfloat16 (and float32) and
reports the same drift statistics the CUDA golden tests print (src/runtime/cuda/backend.test.ts):
  worst_all     max over positions of max over the vocabulary |Δ logprob|
  median        median over positions of that per-position maximum
  worst_likely  max |Δ| over tokens the reference gives logprob > -10
  greedy        argmax agreement where the reference's top-2 margin exceeds 0.05 / 0.5
so a bf16 engine can be held to what the reference implementation reaches at the same precision.

It also writes a golden for the bundled demo model (a trained model, whose logits are not the
peaked ones of the random fixtures) in the fixtures' format, with --demo-golden DIR.

Run on the GPU machine:
    python3 tools/bf16_drift.py --json bench/results/bf16-drift.json --demo-golden test/fixtures/demo-golden
"""
import argparse
import json
import os
import statistics

import torch
from safetensors.torch import load_file
from tokenizers import Tokenizer
from transformers import Llama4ForCausalLM, Llama4TextConfig

DEMO_PROMPTS = ["In the beginning God created", "And Jesus said unto them,"]


def build(model_dir, dtype, device):
    cfg_json = json.load(open(os.path.join(model_dir, "config.json")))
    text = cfg_json.get("text_config", cfg_json)
    skip = ("model_type", "torch_dtype", "dtype")
    cfg = Llama4TextConfig(**{k: v for k, v in text.items() if k not in skip})
    cfg._attn_implementation = "eager"
    model = Llama4ForCausalLM(cfg).eval()
    state = {}
    for k, v in load_file(os.path.join(model_dir, "model.safetensors")).items():
        if k.startswith("language_model."):
            state[k[len("language_model."):]] = v
    model.load_state_dict(state, strict=True)
    # Parameters only: buffers (RoPE inv_freq) stay float32, as transformers keeps them when it
    # loads a bf16 checkpoint with dtype=bfloat16.
    for p in model.parameters():
        p.data = p.data.to(dtype)
    return model.to(device), text


def rows(model, ids, device):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids], device=device), use_cache=False)
    return torch.log_softmax(out.logits[0].double(), dim=-1).cpu()


def drift(got, ref, prompt_len, greedy, margins):
    d = (got - ref).abs()
    per = d.max(dim=1).values.tolist()
    likely = d[ref > -10]
    checked = {0.05: [0, 0], 0.5: [0, 0]}
    for k, tok in enumerate(greedy):
        t = prompt_len - 1 + k
        if t >= got.shape[0]:
            break
        for cut in checked:
            if margins[k] > cut:
                checked[cut][0] += 1
                checked[cut][1] += int(int(got[t].argmax()) == tok)
    return {"worst_all": max(per), "median": statistics.median(per), "worst_likely": float(likely.max()),
            "per_position": per,
            "greedy_margin_0.05": f"{checked[0.05][1]}/{checked[0.05][0]}",
            "greedy_margin_0.5": f"{checked[0.5][1]}/{checked[0.5][0]}"}


def summarize(per_prompt):
    allp = [x for p in per_prompt for x in p["per_position"]]
    return {"worst_all": max(allp), "median": statistics.median(allp),
            "worst_likely": max(p["worst_likely"] for p in per_prompt),
            "prompts": [{k: v for k, v in p.items() if k != "per_position"} for p in per_prompt]}


def fixture_drift(fixture_dir, model_dir, device):
    ref = json.load(open(os.path.join(fixture_dir, "reference.json")))
    vocab = ref["vocab_size"]
    allrows = torch.from_numpy(__import__("numpy").fromfile(os.path.join(fixture_dir, "logprobs.bin"), dtype="<f8")).view(-1, vocab)
    out = {}
    for name, dtype in (("bf16", torch.bfloat16), ("f32", torch.float32)):
        model, _ = build(model_dir, dtype, device)
        at, per_prompt = 0, []
        for p in ref["prompts"]:
            ids = p["prompt_ids"] + p["greedy_ids"]
            want = allrows[at:at + p["positions"]]
            at += p["positions"]
            per_prompt.append(drift(rows(model, ids, device), want, len(p["prompt_ids"]), p["greedy_ids"], p["greedy_top2_margins"]))
        out[name] = summarize(per_prompt)
        del model
    return out


def demo_golden(model_dir, out_dir, device, max_new):
    """The fixtures' golden format for the demo model: float64 compute of its bf16 weights."""
    os.makedirs(out_dir, exist_ok=True)
    model, text = build(model_dir, torch.float64, device)
    tok = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
    bos = text["bos_token_id"]
    eos = set(text["eos_token_id"] if isinstance(text["eos_token_id"], list) else [text["eos_token_id"]])
    entries, allrows = [], []
    for prompt in DEMO_PROMPTS:
        ids = [bos] + tok.encode(prompt, add_special_tokens=False).ids
        cont, margins = [], []
        for _ in range(max_new):
            lp = rows(model, ids + cont, device)[-1]
            top2 = torch.topk(lp, 2)
            margins.append(float(top2.values[0] - top2.values[1]))
            cont.append(int(top2.indices[0]))
            if cont[-1] in eos:
                break
        lp = rows(model, ids + cont, device)
        allrows.append(lp)
        entries.append({"text": prompt, "prompt_ids": ids, "greedy_ids": cont, "greedy_text": tok.decode(cont),
                        "greedy_top2_margins": margins, "positions": len(ids) + len(cont)})
    torch.cat(allrows).numpy().astype("<f8").tofile(os.path.join(out_dir, "logprobs.bin"))
    import transformers
    json.dump({"fixture": "llama4-demo", "model": model_dir, "vocab_size": text["vocab_size"],
               "transformers": transformers.__version__, "torch": torch.__version__,
               "dtype": "float64 compute from the bf16 weights of models/llama4-demo, eager attention",
               "logprobs_file": "logprobs.bin (float64 LE, rows = positions of prompt+greedy, per prompt)",
               "min_greedy_top2_margin": min(min(e["greedy_top2_margins"]) for e in entries), "prompts": entries},
              open(os.path.join(out_dir, "reference.json"), "w"), indent=1)
    return out_dir


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixtures", nargs="*", default=["test/fixtures/scout-tiny", "test/fixtures/maverick-tiny"])
    ap.add_argument("--demo", default="models/llama4-demo")
    ap.add_argument("--demo-golden", default="")
    ap.add_argument("--max-new", type=int, default=24)
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    report = {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "torch": torch.__version__,
              "transformers": __import__("transformers").__version__, "fixtures": {}}
    dirs = list(args.fixtures)
    if args.demo_golden:
        dirs.append(demo_golden(args.demo, args.demo_golden, device, args.max_new))
    for d in dirs:
        # The demo golden holds no weights: they are the demo model's.
        src = args.demo if d == args.demo_golden else d
        report["fixtures"][os.path.basename(d.rstrip("/"))] = r = fixture_drift(d, src, device)
        for prec, s in r.items():
            print(f"{os.path.basename(d)} transformers {prec}: max|Δlogprob| {s['worst_all']:.3e} median {s['median']:.3e} "
                  f"likely {s['worst_likely']:.3e} greedy {[p['greedy_margin_0.05'] for p in s['prompts']]}")
    if args.json:
        json.dump(report, open(args.json, "w"), indent=1)


if __name__ == "__main__":
    main()
