#!/usr/bin/env python3
"""Probe for the MoE prefill: does this machine's cuBLASLt have grouped GEMMs (device-side shapes,
cuBLASLt >= 13.2, experimental), and how fast are they on Scout's expert shapes next to one GEMM
per expert and torch._grouped_mm, measured in the same run?

Shapes (rows are tokens, bf16, fp32 accumulation): gate_up W [16384 x 5120] and down W [5120 x 8192]
per expert, 16 experts; 2048 tokens routed top-1 (uniform 128 each, or uneven); optionally the
shared expert (the same widths, all 2048 rows) as a 17th group of the same call.

    python3 tools/grouped_gemm_probe.py --json OUT.json
"""
import argparse, ctypes, glob, json, os
import torch

# cublasLt.h values (cuBLAS 13.x)
CUDA_R_32F, CUDA_R_16BF, COMPUTE_32F, OP_N, OP_T = 0, 14, 68, 0, 1
DESC_POINTER_MODE, DESC_TRANSA, DESC_TRANSB = 2, 3, 4
POINTER_MODE_DEVICE = 1
PREF_WORKSPACE, PREF_AVG_K, PREF_AVG_ROWS, PREF_AVG_COLS = 1, 13, 14, 15
LAYOUT_ROWS_COLS_WIDTH, LAYOUT_LD_WIDTH, WIDTH_32 = 12, 13, 0
WS = 32 << 20


class Algo(ctypes.Structure):
    _fields_ = [("data", ctypes.c_uint64 * 8)]


class Heur(ctypes.Structure):
    _fields_ = [("algo", Algo), ("workspaceSize", ctypes.c_size_t), ("state", ctypes.c_int),
                ("wavesCount", ctypes.c_float), ("reserved", ctypes.c_int * 4)]


def libraries():
    found = []
    for name in ["libcublasLt.so.13"] + sorted(glob.glob("/usr/local/lib/python3*/dist-packages/nvidia/**/libcublasLt.so.13", recursive=True)) \
            + sorted(glob.glob("/usr/lib/python3*/site-packages/nvidia/**/libcublasLt.so.13", recursive=True)) \
            + sorted(glob.glob("/opt/*/.venv/lib/python3*/site-packages/nvidia/**/libcublasLt.so.13", recursive=True)):
        try:
            lib = ctypes.CDLL(name)
        except OSError as e:
            found.append({"path": name, "error": str(e)})
            continue
        lib.cublasLtGetVersion.restype = ctypes.c_size_t
        found.append({"path": name, "version": int(lib.cublasLtGetVersion()),
                      "grouped": hasattr(lib, "cublasLtGroupedMatrixLayoutCreate"), "lib": lib})
    return found


def check(s, what):
    if s != 0:
        raise RuntimeError(f"{what}: cuBLAS status {s}")


class Grouped:
    """D_g[n_g x m] = X_g[n_g x k] . W_g[m x k]^T for every group g, in one cublasLtMatmul."""

    def __init__(self, lib, m, k, rows, ws):
        self.lib, self.m, self.k, self.rows, self.ws = lib, m, k, rows, ws
        g = len(rows)
        v = ctypes.c_void_p
        self.h, self.desc, self.pref = v(), v(), v()
        check(lib.cublasLtCreate(ctypes.byref(self.h)), "create")
        check(lib.cublasLtMatmulDescCreate(ctypes.byref(self.desc), COMPUTE_32F, CUDA_R_32F), "desc")
        for attr, val in ((DESC_POINTER_MODE, POINTER_MODE_DEVICE), (DESC_TRANSA, OP_T), (DESC_TRANSB, OP_N)):
            x = ctypes.c_int32(val)
            check(lib.cublasLtMatmulDescSetAttribute(self.desc, attr, ctypes.byref(x), 4), f"desc attr {attr}")
        dev = lambda xs: torch.tensor(xs, dtype=torch.int32, device="cuda")
        # Column-major: A = W_g as k x m (op T), B = X_g as k x n_g, D = m x n_g.
        self.arrays = dict(kk=dev([k] * g), mm=dev([m] * g), nn=dev(rows))
        self.layouts = []
        for r, c, ld in (("kk", "mm", "kk"), ("kk", "nn", "kk"), ("mm", "nn", "mm")):
            lay = v()
            check(lib.cublasLtGroupedMatrixLayoutCreate(ctypes.byref(lay), CUDA_R_16BF, g, v(self.arrays[r].data_ptr()),
                                                        v(self.arrays[c].data_ptr()), v(self.arrays[ld].data_ptr())), "grouped layout")
            for attr in (LAYOUT_ROWS_COLS_WIDTH, LAYOUT_LD_WIDTH):
                x = ctypes.c_int32(WIDTH_32)
                check(lib.cublasLtMatrixLayoutSetAttribute(lay, attr, ctypes.byref(x), 4), "layout width")
            self.layouts.append(lay)
        check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(self.pref)), "pref")
        wsb = ctypes.c_uint64(WS)
        check(lib.cublasLtMatmulPreferenceSetAttribute(self.pref, PREF_WORKSPACE, ctypes.byref(wsb), 8), "pref ws")
        for attr, val in ((PREF_AVG_K, k), (PREF_AVG_ROWS, m), (PREF_AVG_COLS, max(1, sum(rows) // g))):
            x = ctypes.c_uint64(val)
            s = lib.cublasLtMatmulPreferenceSetAttribute(self.pref, attr, ctypes.byref(x), 8)
            if s != 0:
                x = ctypes.c_uint32(val)
                check(lib.cublasLtMatmulPreferenceSetAttribute(self.pref, attr, ctypes.byref(x), 4), f"pref avg {attr}")
        res = (Heur * 8)()
        cnt = ctypes.c_int()
        a, b, d = self.layouts
        check(lib.cublasLtMatmulAlgoGetHeuristic(self.h, self.desc, a, b, d, d, self.pref, 8, res, ctypes.byref(cnt)), "heuristic")
        self.algos = [res[i].algo for i in range(cnt.value) if res[i].state == 0 and res[i].workspaceSize <= WS]
        self.alpha = torch.ones(1, dtype=torch.float32, device="cuda")
        self.beta = torch.zeros(1, dtype=torch.float32, device="cuda")

    def bind(self, ws_list, x, y):
        off, pa, pb, pd = 0, [], [], []
        for w, n in zip(ws_list, self.rows):
            pa.append(w.data_ptr())
            pb.append(x.data_ptr() + off * self.k * 2)
            pd.append(y.data_ptr() + off * self.m * 2)
            off += n
        self.ptrs = [torch.tensor(p, dtype=torch.int64, device="cuda") for p in (pa, pb, pd)]

    def run(self, algo, stream):
        v = ctypes.c_void_p
        a, b, d = self.layouts
        pa, pb, pd = (v(p.data_ptr()) for p in self.ptrs)
        s = self.lib.cublasLtMatmul(self.h, self.desc, v(self.alpha.data_ptr()), pa, a, pb, b, v(self.beta.data_ptr()), pd, d, pd, d,
                                    ctypes.byref(algo), v(self.ws.data_ptr()), ctypes.c_size_t(WS), v(stream))
        return s


def timeit(fn, reps=20, warm=3):
    for _ in range(warm):
        fn()
    e0, e1 = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    e0.record()
    for _ in range(reps):
        fn()
    e1.record()
    torch.cuda.synchronize()
    return e0.elapsed_time(e1) / reps / 1e3


def uneven(total, groups, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.rand(groups, generator=g) ** 3 + 0.05
    r = (w / w.sum() * total).floor().to(torch.int64)
    r[0] += total - int(r.sum())
    return [int(x) for x in r]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "cases": []}
    libs = libraries()
    out["libraries"] = [{k: v for k, v in l.items() if k != "lib"} for l in libs]
    print(json.dumps(out["libraries"]))
    lib = next((l["lib"] for l in libs if l.get("grouped")), None)
    torch.manual_seed(0)
    E, H, I, T = 16, 5120, 8192, 2048
    ws = torch.empty(WS, dtype=torch.uint8, device="cuda")
    stream = torch.cuda.current_stream().cuda_stream
    # Weights: 17 (16 routed + shared) of each shape, ~4.3 GB.
    w_gu = torch.randn(E + 1, 2 * I, H, dtype=torch.bfloat16, device="cuda") * 0.02
    w_dn = torch.randn(E + 1, H, I, dtype=torch.bfloat16, device="cuda") * 0.02
    peak = None
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    peak = 2 * 8192 ** 3 / timeit(lambda: a @ a, reps=10)
    buf = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    buf2 = torch.empty_like(buf)
    copy = 2 * buf.numel() / timeit(lambda: buf2.copy_(buf), reps=10)
    del a, buf, buf2
    out["gemm_peak_tflops"], out["copy_gbps"] = peak / 1e12, copy / 1e9
    print(f"{out['device']}  bf16 GEMM peak {peak/1e12:.0f} TFLOP/s  copy {copy/1e9:.0f} GB/s")
    dists = {"uniform": [T // E] * E, "uneven": uneven(T, E, 1), "one-empty": [0] + [T // (E - 1)] * (E - 2) + [T - (T // (E - 1)) * (E - 2)]}
    for proj, W, m, k in (("gate_up", w_gu, 2 * I, H), ("down", w_dn, H, I)):
        for dname, rows in dists.items():
            for shared in (False, True):
                rr = rows + ([T] if shared else [])
                wl = [W[i] for i in range(E)] + ([W[E]] if shared else [])
                n = sum(rr)
                x = torch.randn(n, k, dtype=torch.bfloat16, device="cuda")
                y = torch.empty(n, m, dtype=torch.bfloat16, device="cuda")
                ref = torch.empty_like(y)
                offs = [0]
                for r in rr:
                    offs.append(offs[-1] + r)
                def loop():
                    for g, r in enumerate(rr):
                        if r:
                            torch.mm(x[offs[g]:offs[g + 1]], wl[g].t(), out=ref[offs[g]:offs[g + 1]])
                flops = 2 * n * m * k
                wbytes = sum(2 * m * k for r in rr if r)
                case = {"proj": proj, "rows": dname, "shared_group": shared, "groups": len(rr), "tokens": n,
                        "flops": flops, "weight_bytes": wbytes}
                t = timeit(loop)
                case["loop_s"] = t
                loop()
                torch.cuda.synchronize()
                try:
                    wt = torch.stack(wl).transpose(1, 2) if dname != "one-empty" else None
                    if wt is not None:
                        o = torch.tensor(offs[1:], dtype=torch.int32, device="cuda")
                        case["torch_grouped_mm_s"] = timeit(lambda: torch._grouped_mm(x, wt, offs=o))
                        del wt
                except Exception as e:  # noqa: BLE001
                    case["torch_grouped_mm_error"] = str(e)[:200]
                if lib is not None:
                    try:
                        gg = Grouped(lib, m, k, rr, ws)
                        gg.bind(wl, x, y)
                        best = None
                        for i, al in enumerate(gg.algos):
                            y.zero_()
                            s = gg.run(al, stream)
                            if s != 0:
                                case.setdefault("algo_errors", []).append(s)
                                continue
                            torch.cuda.synchronize()
                            err = ((y.float() - ref.float()).abs().max() / ref.float().abs().max()).item()
                            ti = timeit(lambda: gg.run(al, stream))
                            case.setdefault("grouped_algos", []).append({"i": i, "s": ti, "rel_err": err})
                            if best is None or ti < best:
                                best = ti
                        case["grouped_best_s"] = best
                        case["grouped_candidates"] = len(gg.algos)
                    except Exception as e:  # noqa: BLE001
                        case["grouped_error"] = str(e)[:300]
                out["cases"].append(case)
                fmt = lambda s: f"{s*1e3:.3f} ms ({flops/s/1e12:.0f} TF/s, {wbytes/s/1e9:.0f} GB/s)" if s else "-"
                print(f"{proj:8s} {dname:9s} shared={int(shared)} n={n}: loop {fmt(case['loop_s'])}  torch_gmm {fmt(case.get('torch_grouped_mm_s'))}"
                      f"  lt_grouped {fmt(case.get('grouped_best_s'))} [{case.get('grouped_candidates', 0)} algos"
                      f"{'; err ' + case['grouped_error'] if 'grouped_error' in case else ''}]")
                if "grouped_algos" in case:
                    print("   algos:", " ".join(f"{a['s']*1e3:.3f}/{a['rel_err']:.1e}" for a in case["grouped_algos"]))
                del x, y, ref
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
