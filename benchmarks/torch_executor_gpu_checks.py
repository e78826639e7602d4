"""Part (a) of the GPU benchmark: correctness on CUDA in bf16 — the Triton decode kernel against the torch
reference, the tiny model and llama-1b against transformers' float32 forward, the swap round trip."""

from __future__ import annotations

import copy

import torch
from torch_executor_gpu_common import log, rel_err, section, toks

from gpu_backend.models import LlamaWeights, build_hf_model
from gpu_backend.paged_attention import decode_attention_torch, decode_attention_triton
from gpu_backend.plan import BatchPlan, GroupMove, PrefillChunk
from gpu_backend.torch_executor import TorchExecutor


@section("a1 triton decode kernel")
def check_triton() -> dict:
    out = {}
    torch.manual_seed(0)
    for (B, H, KVH, D) in [(7, 32, 8, 64), (33, 9, 3, 64), (5, 32, 8, 128), (64, 32, 8, 64)]:  # split and not
        store = torch.randn(500, 3, 2, KVH, 16, D, dtype=torch.bfloat16, device="cuda")
        kc, vc = store[:, 1, 0], store[:, 1, 1]
        q = torch.randn(B, H, D, dtype=torch.bfloat16, device="cuda")
        ctx = torch.randint(1, 1500, (B,), device="cuda")
        W = int((ctx.max() + 15) // 16)
        bt = torch.stack([torch.randperm(500, device="cuda")[:W] for _ in range(B)])
        ref = decode_attention_torch(q.float(), kc.float(), vc.float(), bt, ctx, D ** -0.5)
        got = torch.full_like(q, float("nan"))
        decode_attention_triton(q, kc, vc, bt, ctx, D ** -0.5, out=got)
        torch.cuda.synchronize()
        e = rel_err(got, ref)
        out[f"B{B}_H{H}_KV{KVH}_D{D}"] = e
        if not e < 1e-2:
            raise AssertionError(f"Triton decode kernel B={B} H={H} KVH={KVH} D={D}: relative error {e:.2e}")
    log("   " + ", ".join(f"{k} {v:.1e}" for k, v in out.items()))
    return out


def bf16_pair(name: str, seed: int):
    """Our bf16 weights and a float32 transformers reference holding the same (bf16-rounded) weights."""
    hf = build_hf_model(name, torch.bfloat16, "cuda", seed)
    if name == "tiny":
        g = torch.Generator(device="cuda").manual_seed(5)
        with torch.no_grad():
            for n, p in hf.named_parameters():
                if "norm" in n:
                    p.add_(0.2 * torch.randn(p.shape, generator=g, device="cuda", dtype=p.dtype))
    weights = LlamaWeights.from_hf(hf, name)
    ref = copy.deepcopy(hf).float()
    return weights, ref, hf


@section("a2 tiny model bf16 vs transformers fp32")
def check_tiny() -> dict:
    weights, ref, _ = bf16_pair("tiny", 0)

    def hf_logits(ids):
        with torch.no_grad():
            return ref(torch.tensor([ids], device="cuda")).logits[0]

    ex = TorchExecutor(weights, device="cuda", num_gpu_blocks=64, num_host_blocks=32, keep_logits=True)
    res = {}
    a, b = toks(37, 1), toks(90, 2)
    ex.execute(BatchPlan(prefills=[PrefillChunk(1, 0, 37, [5, 6, 9], True, a)]))
    res["plain_prefill"] = rel_err(ex.last_logits[1], hf_logits(a).cpu())
    table = [20, 3, 4, 40, 41, 7]
    rb = hf_logits(b).cpu()
    errs, start = [], 0
    for n in (13, 35, 32):
        ex.execute(BatchPlan(prefills=[PrefillChunk(2, start, n, table, True, b[start:start + n])]))
        errs.append(rel_err(ex.last_logits[2], rb[start:start + n]))
        start += n
    res["chunked_prefill"] = max(errs)
    shared = a[:32]
    c = shared + toks(20, 3)
    ex.execute(BatchPlan(prefills=[PrefillChunk(3, 32, 20, [5, 6, 30, 31], True, c[32:])]))
    res["prefix_hit_prefill"] = rel_err(ex.last_logits[3], hf_logits(c)[32:].cpu())
    # mixed: a prefill chunk beside two decodes, then decodes
    d = toks(40, 4)
    errs = []
    plan = BatchPlan(prefills=[PrefillChunk(4, 0, 40, [50, 51, 52], True, d)], decode_seq_ids=[1, 2],
                     decode_positions=[37, 80], decode_block_tables=[[5, 6, 9], table],
                     decode_input_ids=[toks(1, 9)[0], b[80]])
    ex.execute(plan)
    errs.append(rel_err(ex.last_logits[2], rb[80:81]))
    for p in range(81, 90):
        ex.execute(BatchPlan(decode_seq_ids=[2], decode_positions=[p], decode_block_tables=[table],
                             decode_input_ids=[b[p]]))
        errs.append(rel_err(ex.last_logits[2], rb[p:p + 1]))
    res["mixed_and_decode"] = max(errs)
    # swap round trip: out, overwrite, back in elsewhere; bit-identical, then decode over it
    before = ex.store.gpu_blocks(table)
    ex.execute(BatchPlan(swap_out=[GroupMove(3, 0, 2), GroupMove(40, 2, 2), GroupMove(7, 4, 1),
                                   GroupMove(20, 5, 1)]))
    ex.execute(BatchPlan(prefills=[PrefillChunk(5, 0, 96, [20, 3, 4, 40, 41, 7], False, toks(96, 6))]))
    new_table = [10, 11, 12, 13, 14, 15]
    plan = BatchPlan(swap_in=[GroupMove(5, 10, 1), GroupMove(0, 11, 2), GroupMove(2, 13, 2), GroupMove(4, 15, 1)])
    ex.execute(plan)
    res["swap_bit_identical"] = bool(torch.equal(ex.store.gpu_blocks(new_table), before))
    ex.execute(BatchPlan(decode_seq_ids=[2], decode_positions=[89], decode_block_tables=[new_table],
                         decode_input_ids=[b[89]]))
    res["after_swap_decode"] = rel_err(ex.last_logits[2], rb[89:90])
    log("   " + ", ".join(f"{k} {v:.1e}" if isinstance(v, float) else f"{k} {v}" for k, v in res.items()))
    if not res["swap_bit_identical"]:
        raise AssertionError("swap round trip did not restore the KV bit for bit")
    bad = {k: v for k, v in res.items() if isinstance(v, float) and not v < 2e-2}
    if bad:
        raise AssertionError(f"bf16 logits too far from the float32 reference: {bad}")
    return res


def logged_within_hf_bf16(res: dict, key: str, what: str) -> dict:
    """Log ``res``; refuse a logits error ``res[key]`` above 1.5x transformers' own bf16 error."""
    log("   " + ", ".join(f"{k} {v:.3g}" for k, v in res.items()))
    if not res[key] <= 1.5 * res["hf_bf16_logits_rel_err"]:
        raise AssertionError(f"{what} logits relative error {res[key]:.2e}, "
                             f"transformers' bf16 has {res['hf_bf16_logits_rel_err']:.2e}")
    return res


@section("a3 llama-1b bf16: eager logits and graph tokens")
def check_1b() -> dict:
    weights, ref, hf_bf16 = bf16_pair("llama-1b", 1)
    res = {}
    prompts = [toks(64 + 8 * i, 100 + i) for i in range(8)]
    tables = [list(range(20 * i, 20 * i + 20)) for i in range(8)]
    runs = {}
    for mode in ("eager", "graph"):
        ex = TorchExecutor(weights, device="cuda", num_gpu_blocks=200, num_host_blocks=0, max_model_len=2048,
                           max_num_seqs=16, keep_logits=(mode == "eager"))
        # the graph run is teacher-forced with the eager run's tokens, so one near-tie that rounds the other
        # way counts once instead of sending the rest of its sequence elsewhere
        forced = runs["eager"][0] if mode == "graph" else None
        seqs = [list(p) for p in prompts]
        r = ex.execute(BatchPlan(prefills=[PrefillChunk(i, 0, len(p), tables[i], True, p)
                                           for i, p in enumerate(prompts)]))
        logits = {i: [ex.last_logits[i][-1:]] for i in range(8)} if mode == "eager" else None
        for i in range(8):
            seqs[i].append(r.sampled_tokens[i])
        for step in range(24):
            inputs = [s[-1] for s in seqs] if forced is None else [f[len(p) + step] for f, p in zip(forced, prompts)]
            plan = BatchPlan(decode_seq_ids=list(range(8)), decode_positions=[len(p) + step for p in prompts],
                             decode_block_tables=tables, decode_input_ids=inputs)
            r = ex.execute(plan)
            for i in range(8):
                seqs[i].append(r.sampled_tokens[i])
                if logits is not None:
                    logits[i].append(ex.last_logits[i])
        runs[mode] = (seqs, logits)
        del ex
    seqs, logits = runs["eager"]
    errs, hf_errs = [], []
    agree = total = 0
    for i in range(8):
        with torch.no_grad():
            ids = torch.tensor([seqs[i][:-1]], device="cuda")
            full = ref(ids).logits[0].cpu()
            theirs = hf_bf16(ids).logits[0].cpu()
        mine = torch.cat(logits[i])
        p0 = len(prompts[i]) - 1
        errs.append(rel_err(mine, full[p0:]))
        hf_errs.append(rel_err(theirs[p0:], full[p0:]))
        agree += int((full[p0:].argmax(-1) == torch.tensor(seqs[i][p0 + 1:])).sum())
        total += len(seqs[i]) - p0 - 1
    res["eager_logits_rel_err"] = max(errs)
    res["hf_bf16_logits_rel_err"] = max(hf_errs)    # transformers' own bf16 forward: the yardstick
    res["eager_tokens_equal_fp32_argmax"] = agree / total
    g = runs["graph"][0]
    sampled = [(s[len(p):], t[len(p):]) for s, t, p in zip(seqs, g, prompts)]     # past each prompt
    res["graph_tokens_equal_eager"] = sum(a == b for s, t in sampled for a, b in zip(s, t)) / sum(len(t) for _, t in sampled)
    return logged_within_hf_bf16(res, "eager_logits_rel_err", "llama-1b bf16")


@section("a4 llama-1b bf16: a decode of 128 rows with executor flags against float32")
def check_decode_flags(**flags) -> dict:
    """A 128-row decode with executor ``flags`` (none: as shipped; ``split_gemms``: the QKV, output and
    down products cut into batched K slices whose partials the fused kernels sum; ``epilogue_gemms``:
    gate/up applying SwiGLU itself): logits against transformers' float32 forward, beside
    transformers' own bf16 forward as the yardstick."""
    weights, ref, hf_bf16 = bf16_pair("llama-1b", 2)
    n, plen = 128, 24
    prompts = [toks(plen, 300 + i) for i in range(n)]
    tables = [[2 * i, 2 * i + 1] for i in range(n)]
    ex = TorchExecutor(weights, device="cuda", num_gpu_blocks=2 * n + 16, num_host_blocks=0, max_model_len=2048,
                       max_num_seqs=n, keep_logits=True, **flags)
    r = ex.execute(BatchPlan(prefills=[PrefillChunk(i, 0, plen, tables[i], True, p) for i, p in enumerate(prompts)]))
    nxt = [r.sampled_tokens[i] for i in range(n)]
    ex.execute(BatchPlan(decode_seq_ids=list(range(n)), decode_positions=[plen] * n, decode_block_tables=tables,
                         decode_input_ids=nxt))
    mine = torch.cat([ex.last_logits[i] for i in range(n)]).float().cpu()
    split = ex.model.linear.split_sms
    del ex
    with torch.no_grad():
        ids = torch.tensor([p + [t] for p, t in zip(prompts, nxt)], device="cuda")
        full = ref(ids).logits[:, -1].float().cpu()
        theirs = hf_bf16(ids).logits[:, -1].float().cpu()
    res = {"split_sms": split, "logits_rel_err": rel_err(mine, full),
           "hf_bf16_logits_rel_err": rel_err(theirs, full),
           "tokens_equal_fp32_argmax": float((mine.argmax(-1) == full.argmax(-1)).float().mean())}
    log(f"   flags: {flags}")
    return logged_within_hf_bf16(res, "logits_rel_err", "+".join(f"{k}={v}" for k, v in flags.items()) or "default")
