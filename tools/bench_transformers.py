#!/usr/bin/env python3
"""Peer timing for docs/PERF.md: transformers' generate() on a Llama 4 config with random bf16
weights on one GPU, plus the device-to-device copy bandwidth and a bf16 GEMM peak measured in
the same run, and torch's scaled_dot_product_attention (flash and cuDNN backends) on the
prefill-attention shape of issue 4 (causal, GQA 40/8, head_dim 128).

    python3 tools/bench_transformers.py --config bench/configs/scout-4layer/config.json --json OUT
"""
import argparse, json, time
import torch
from transformers import Llama4ForCausalLM, Llama4TextConfig


def timed(fn, reps=10, warm=3):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(reps):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / reps


def copy_bandwidth():
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    s = timed(lambda: b.copy_(a))
    return 2 * a.numel() / s


def gemm_peak(n=8192):
    a = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(n, n, dtype=torch.bfloat16, device="cuda")
    s = timed(lambda: a @ b)
    return 2 * n ** 3 / s


def sdpa(seq=8192, hq=40, hkv=8, d=128):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    q = torch.randn(1, hq, seq, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1, hkv, seq, d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(1, hkv, seq, d, dtype=torch.bfloat16, device="cuda")
    flops = 4 * hq * d * seq * (seq + 1) / 2  # causal
    out = {}
    for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel(be):
                s = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True))
            out[name] = {"seconds": s, "tflops": flops / s / 1e12}
        except Exception as e:  # a backend may be missing on this build
            out[name] = {"error": str(e)[:200]}
    return out


def generate_rate(cfg_path, batch, input_len, output_len):
    cfg = json.load(open(cfg_path))
    text = cfg.get("text_config", cfg)
    kw = {k: v for k, v in text.items() if k not in ("model_type", "torch_dtype")}
    kw["attn_temperature_tuning"] = bool(kw.get("attn_temperature_tuning", True))  # hub files say 4
    conf = Llama4TextConfig(**kw)
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Llama4ForCausalLM(conf).to(torch.bfloat16).eval()
    ids = torch.randint(0, conf.vocab_size, (batch, input_len), device="cuda")
    def run(n):
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    run(4)
    torch.cuda.synchronize()
    t = time.perf_counter(); run(1); torch.cuda.synchronize(); prefill = time.perf_counter() - t
    t = time.perf_counter(); run(output_len); torch.cuda.synchronize(); total = time.perf_counter() - t
    return {"batch": batch, "input_len": input_len, "output_len": output_len,
            "decode_tokens_per_s": batch * (output_len - 1) / (total - prefill), "prefill_s": prefill}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="bench/configs/scout-4layer/config.json")
    ap.add_argument("--json")
    ap.add_argument("--skip-generate", action="store_true")
    a = ap.parse_args()
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
           "copy_bandwidth_gb_s": copy_bandwidth() / 1e9, "bf16_gemm_tflops": gemm_peak() / 1e12,
           "sdpa_causal_8k": sdpa()}
    print(json.dumps(res, indent=1), flush=True)
    if not a.skip_generate:
        import transformers
        res["transformers"] = transformers.__version__
        res["generate_b1"] = generate_rate(a.config, 1, 1024, 32)
    print(json.dumps(res, indent=1))
    if a.json:
        json.dump(res, open(a.json, "w"), indent=1)


if __name__ == "__main__":
    main()
