"""The gate/up product with SwiGLU in its epilogue, one Triton kernel, against cuBLAS then ``silu_mul``.

Session 12 measured a launch in a CUDA graph at 1.15 us on an H200 even for an empty kernel,
and ``silu_mul`` at ~3.1 us a layer: a product that applies ``silu(gate) * up`` as it writes its
tile would save both. Each program computes one ``BLOCK_M x BLOCK_N`` tile of the output from
two accumulators, the gate rows ``n`` and the up rows ``I + n`` of the fused weight (no change of
layout), rounding as transformers does (gate and up to bf16, then the SiLU to bf16, then the
product). Two ways to feed the tensor cores: plain pointer loads, and Hopper's tensor memory
accelerator through host-built tensor descriptors.

Timed as the decode step runs it: every layer's own weight in turn inside one CUDA graph (weights
read cold), against cuBLAS's product followed by ``fused_ops.silu_mul`` in the same run.

    python3 benchmarks/gate_up_silu_gpu.py [--model llama-1b] [--rows 256,128] [--out FILE.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from gemm_cold_gpu import cold_bench_setup, cold_cases, cold_seconds  # noqa: E402
from print_table import print_table  # noqa: E402

from gpu_backend.fused_ops import silu_mul  # noqa: E402

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # older Triton: the pointer kernel only
    TensorDescriptor = None

# (BLOCK_M, BLOCK_N, BLOCK_K, warps, stages)
CONFIGS = ((256, 64, 64, 8, 3), (256, 64, 64, 8, 4), (256, 64, 32, 8, 6), (256, 64, 128, 8, 2),
           (128, 128, 64, 8, 3), (128, 128, 64, 8, 4), (128, 128, 32, 8, 6), (128, 64, 64, 4, 4),
           (128, 64, 128, 8, 3), (128, 64, 64, 8, 4), (64, 128, 64, 4, 4), (64, 64, 128, 4, 4))
KERNELS = ("pointers", "tma")   # "tma_ws" (warp specialisation) hung on Triton 3.6 on an H200


@triton.jit
def _swiglu_epilogue(acc_g, acc_u, OUT, offs_m, offs_n, M, stride_om):
    g = acc_g.to(OUT.dtype.element_ty).to(tl.float32)
    s = (g / (1.0 + tl.exp(-g))).to(OUT.dtype.element_ty).to(tl.float32)
    u = acc_u.to(OUT.dtype.element_ty).to(tl.float32)
    tl.store(OUT + offs_m[:, None] * stride_om + offs_n[None, :], (s * u).to(OUT.dtype.element_ty),
             mask=offs_m[:, None] < M)


@triton.jit
def _gate_up_silu_ptr_kernel(X, W, OUT, M, K, I, stride_xm, stride_wn, stride_om,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    pid_n = pid // num_m
    pid_m = pid % num_m
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    x_ptrs = X + offs_m[:, None] * stride_xm + offs_k[None, :]
    g_ptrs = W + offs_n[:, None] * stride_wn + offs_k[None, :]
    u_ptrs = g_ptrs + I * stride_wn
    rows_ok = offs_m[:, None] < M
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, K, BLOCK_K):
        x = tl.load(x_ptrs, mask=rows_ok, other=0.0)
        acc_g = tl.dot(x, tl.trans(tl.load(g_ptrs)), acc_g)
        acc_u = tl.dot(x, tl.trans(tl.load(u_ptrs)), acc_u)
        x_ptrs += BLOCK_K
        g_ptrs += BLOCK_K
        u_ptrs += BLOCK_K
    _swiglu_epilogue(acc_g, acc_u, OUT, offs_m, offs_n, M, stride_om)


@triton.jit
def _gate_up_silu_tma_kernel(x_desc, w_desc, OUT, M, K, I, stride_om,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    pid_n = pid // num_m
    pid_m = pid % num_m
    m0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in range(0, K, BLOCK_K):
        x = x_desc.load([m0, k])
        acc_g = tl.dot(x, w_desc.load([n0, k]).T, acc_g)
        acc_u = tl.dot(x, w_desc.load([I + n0, k]).T, acc_u)
    _swiglu_epilogue(acc_g, acc_u, OUT, m0 + tl.arange(0, BLOCK_M), n0 + tl.arange(0, BLOCK_N), M, stride_om)


@triton.jit
def _gate_up_silu_tma_ws_kernel(x_desc, w_desc, OUT, M, K, I, stride_om,
                                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    """The TMA kernel with Triton's warp specialisation: producer warps issue the copies, consumers multiply."""
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BLOCK_M)
    pid_n = pid // num_m
    pid_m = pid % num_m
    m0 = pid_m * BLOCK_M
    n0 = pid_n * BLOCK_N
    acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k in tl.range(0, K, BLOCK_K, warp_specialize=True):
        x = x_desc.load([m0, k])
        acc_g = tl.dot(x, w_desc.load([n0, k]).T, acc_g)
        acc_u = tl.dot(x, w_desc.load([I + n0, k]).T, acc_u)
    _swiglu_epilogue(acc_g, acc_u, OUT, m0 + tl.arange(0, BLOCK_M), n0 + tl.arange(0, BLOCK_N), M, stride_om)


def gate_up_silu(x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, cfg, kernel: str) -> torch.Tensor:
    bm, bn, bk, warps, stages = cfg
    m, k = x.shape
    inter = w.shape[0] // 2
    grid = (triton.cdiv(m, bm) * (inter // bn),)
    if kernel != "pointers":
        xd = TensorDescriptor.from_tensor(x, [bm, bk])
        wd = TensorDescriptor.from_tensor(w, [bn, bk])
        fn = _gate_up_silu_tma_kernel if kernel == "tma" else _gate_up_silu_tma_ws_kernel
        fn[grid](xd, wd, out, m, k, inter, out.stride(0), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
                 num_warps=warps, num_stages=stages)
    else:
        _gate_up_silu_ptr_kernel[grid](x, w, out, m, k, inter, x.stride(0), w.stride(0), out.stride(0),
                                       BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)
    return out


def main() -> int:
    setup = cold_bench_setup("gate_up_silu_gpu", __doc__, "256,128")
    if setup is None:
        return 2
    args, res = setup
    args.kinds = "gate_up"
    layers = res["layers"]
    table = []
    for kind, n, k, ws, m, x in cold_cases(args, layers):
        inter = n // 2
        ref = silu_mul(F.linear(x, ws[0]))
        outs = [torch.empty((m, n), dtype=torch.bfloat16, device="cuda") for _ in range(layers)]
        product = cold_seconds(lambda i: torch.matmul(x, ws[i].t(), out=outs[i]), layers)
        pair = cold_seconds(lambda i: silu_mul(torch.matmul(x, ws[i].t(), out=outs[i])), layers)
        fused_out = torch.empty((m, inter), dtype=torch.bfloat16, device="cuda")
        best = None
        for kernel in (KERNELS if TensorDescriptor is not None else ("pointers",)):
            for cfg in CONFIGS:
                if inter % cfg[1] or k % cfg[2]:
                    continue
                try:
                    got = gate_up_silu(x, ws[0], fused_out, cfg, kernel)
                    err = float((got.float() - ref.float()).abs().max() / ref.float().abs().max())
                    t = cold_seconds(lambda i: gate_up_silu(x, ws[i], fused_out, cfg, kernel), layers)
                except (triton.runtime.errors.OutOfResources, triton.compiler.errors.CompilationError,
                        TypeError, RuntimeError) as e:   # a config or kernel this Triton cannot build
                    print(f"   {m} rows {cfg} {kernel}: {type(e).__name__}: {str(e)[:200]}", flush=True)
                    continue
                row = {"rows": m, "config": "x".join(map(str, cfg[:3])) + f"/w{cfg[3]}/st{cfg[4]}", "kernel": kernel,
                       "us": t * 1e6, "max_rel_err": err}
                res["results"].append({**row, "cublas_product_us": product * 1e6, "cublas_pair_us": pair * 1e6})
                print(f"   {m} rows {row['config']} {kernel}: {row['us']:.1f} us (pair {pair * 1e6:.1f}), "
                      f"err {err:.1e}", flush=True)
                if best is None or t < best[0]:
                    best = (t, row)
        if best:
            table.append((m, f"{product * 1e6:.1f}", f"{pair * 1e6:.1f}", best[1]["config"] + " " + best[1]["kernel"], f"{best[0] * 1e6:.1f}", f"{pair / best[0]:.2f}x", f"{best[1]['max_rel_err']:.1e}"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2))
    print(f"\n{res['device']} {res['date']}, {args.model} gate/up ({layers} layers' weights, read cold), us per layer")
    print_table(("rows", "cuBLAS product", "cuBLAS + silu_mul", "fused: best config", "fused us", "speed-up",
                 "max rel err"), table, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
