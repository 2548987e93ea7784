#!/usr/bin/env python3
"""The torch side of bench/attention.sh: scaled_dot_product_attention (flash and cuDNN backends)
on the prefill shape of the CUDA backend issue (causal, GQA 40/8, head_dim 128, 8k tokens),
timed with CUDA events (median of --reps after warm-up), and the device-to-device copy
bandwidth. Writes the inputs and the flash output as raw bf16 ([T, H, D] row-major) under --io
so bench/attention.ts checks our kernel against them at full size.

    python3 bench/attention_torch.py --io /tmp/attn_io --json OUT/torch.json
"""
import argparse, json, os
import torch


def median_ms(fn, reps=30, warm=5):
    for _ in range(warm):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2], times


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--io", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--seq", type=int, default=8192)
    ap.add_argument("--reps", type=int, default=30)
    args = ap.parse_args()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    T, hq, hkv, d = args.seq, 40, 8, 128
    torch.manual_seed(0)
    q = torch.randn(1, hq, T, d, dtype=torch.bfloat16, device="cuda")
    k = torch.randn(1, hkv, T, d, dtype=torch.bfloat16, device="cuda")
    v = torch.randn(1, hkv, T, d, dtype=torch.bfloat16, device="cuda")
    flops = 4 * hq * d * T * (T + 1) / 2  # causal, as tools/bench_transformers.py counts
    res = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "seq": T, "hq": hq, "hkv": hkv, "dim": d, "flops": flops}

    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    a.fill_(7)
    ms, _ = median_ms(lambda: b.copy_(a), reps=20)
    res["copy_bandwidth_gb_s"] = 2 * a.numel() / ms / 1e6
    del a, b

    outs = {}
    for name, be in (("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION)):
        try:
            with sdpa_kernel(be):
                f = lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
                outs[name] = f()
                ms, times = median_ms(f, reps=args.reps)
            res[name] = {"ms": ms, "tflops": flops / ms / 1e9, "min_ms": times[0], "max_ms": times[-1]}
        except Exception as e:  # a backend may be missing on this build
            res[name] = {"error": str(e)[:300]}
    if "flash" in outs and "cudnn" in outs:
        o1, o2 = outs["flash"].float(), outs["cudnn"].float()
        res["cudnn_vs_flash_rel_err"] = float((o1 - o2).norm() / o1.norm())

    os.makedirs(args.io, exist_ok=True)
    def dump(name, x):  # [1, H, T, D] -> [T, H, D] raw bf16
        x.transpose(1, 2).contiguous().view(torch.int16).cpu().numpy().tofile(os.path.join(args.io, name))
    dump("q.bin", q)
    dump("k.bin", k)
    dump("v.bin", v)
    if "flash" in outs:
        dump("o_flash.bin", outs["flash"])
    with open(args.json, "w") as fh:
        json.dump(res, fh, indent=1)
    for name in ("flash", "cudnn"):
        r = res.get(name, {})
        print(f"torch sdpa {name:6s}: " + (f"{r['ms']:.3f} ms  {r['tflops']:.1f} TFLOP/s" if "ms" in r else r.get("error", "?")))
    print(f"copy bandwidth (torch): {res['copy_bandwidth_gb_s']:.0f} GB/s")


if __name__ == "__main__":
    main()
