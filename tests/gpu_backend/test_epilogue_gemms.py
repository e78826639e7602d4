"""The gate/up product with SwiGLU in its epilogue (gpu_backend/epilogue_gemms.py).

The Triton kernel runs on a CUDA device, or on the CPU under Triton's interpreter
(``TRITON_INTERPRET=1``), where it is compared with cuBLAS's pair in float32 (the interpreter
rounds to bf16 differently). Off CUDA the public function is the pair itself."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from gpu_backend import epilogue_gemms
from gpu_backend.epilogue_gemms import TileConfig, gate_up_silu, gate_up_silu_kernel
from gpu_backend.fused_ops import silu_mul
from gpu_backend.torch_executor import TorchExecutor
from tests.gpu_backend.kernel_device import kernel_device

needs_kernel = pytest.mark.skipif(kernel_device() is None or epilogue_gemms.TensorDescriptor is None,
                                  reason="needs CUDA, or triton with TRITON_INTERPRET=1, and tensor descriptors")
SMALL = TileConfig(block_m=32, block_k=32, num_warps=4, num_stages=2, block_n=32)


def _operands(m: int, k: int = 64, inter: int = 96, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(m)
    x = torch.randn(m, k, generator=g).to(dtype).to(device)
    w = (torch.randn(2 * inter, k, generator=g) * 0.2).to(dtype).to(device)
    return x, w


def test_off_cuda_it_is_cublas_then_silu_mul():
    x, w = _operands(200)
    assert not epilogue_gemms.applies(x, w)
    assert torch.equal(gate_up_silu(x, w), silu_mul(F.linear(x, w)))
    calls = []

    def linear(a, b):           # the caller's product (the executor passes its LinearPlan)
        calls.append(b.shape)
        return F.linear(a, b)

    assert torch.equal(gate_up_silu(x, w, linear), silu_mul(F.linear(x, w))) and calls == [(192, 64)]


def test_only_measured_shapes_and_rows_on_cuda_take_the_kernel(monkeypatch):
    w = torch.zeros(16384, 2048)            # llama-1b's gate/up, measured faster at 128-512 rows
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: True))
    sizes = {m: epilogue_gemms.applies(torch.zeros(m, 2048), w) for m in (64, 127, 128, 256, 512, 513)}
    others = [epilogue_gemms.applies(torch.zeros(256, k), torch.zeros(n, k)) for n, k in ((3072, 576), (28672, 4096))]
    if epilogue_gemms.TensorDescriptor is None:
        assert not any(sizes.values())
    else:
        assert sizes == {64: False, 127: False, 128: True, 256: True, 512: True, 513: False}
    assert others == [False, False]         # smollm2-135m's and llama-8b's: measured slower or mixed
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda t: False))
    assert not epilogue_gemms.applies(torch.zeros(256, 2048), w)


def test_operands_that_do_not_multiply_are_named():
    x, w = _operands(4)
    with pytest.raises(ValueError, match=r"gate_up_silu: x \(4, 64\) and weight \(192, 63\) do not multiply"):
        gate_up_silu(x, w[:, :63])
    with pytest.raises(ValueError, match="must be contiguous"):
        gate_up_silu(x, w.t().contiguous().t())


@pytest.mark.skipif(epilogue_gemms.TensorDescriptor is None, reason="needs triton with tensor descriptors")
def test_a_config_that_does_not_tile_the_weight_is_refused():
    x, w = _operands(4, inter=80)
    with pytest.raises(ValueError, match=r"a fused gate/up weight of 160 rows and K=64 does not tile"):
        gate_up_silu_kernel(x, w, SMALL)
    x, w = _operands(4)
    with pytest.raises(ValueError, match=r"a fused gate/up weight of 191 rows"):
        gate_up_silu_kernel(x, w[:191].contiguous(), SMALL)


@needs_kernel
@pytest.mark.parametrize("rows", [1, 32, 40, 77])
def test_kernel_matches_cublas_then_silu_mul(rows):
    dev = kernel_device()
    dtype = torch.bfloat16 if dev == "cuda" else torch.float32
    x, w = _operands(rows, dtype=dtype, device=dev)
    got = gate_up_silu_kernel(x, w, SMALL)
    want = silu_mul(F.linear(x, w))
    assert got.shape == (rows, 96) and got.dtype == dtype
    tol = 1e-5 if dtype == torch.float32 else 2e-2      # bf16 on CUDA: a different summation order of K
    torch.testing.assert_close(got.float(), want.float(), atol=tol, rtol=tol)


def test_the_executor_refuses_epilogue_gemms_off_cuda():
    with pytest.raises(ValueError, match=r"epilogue_gemms=True needs a CUDA GPU of compute capability 9.0 or newer"
                                         r".*device is cpu"):
        TorchExecutor("tiny", device="cpu", num_gpu_blocks=8, num_host_blocks=0, epilogue_gemms=True)
