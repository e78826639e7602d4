"""Shared fixtures for the ranker tests: nothing may be fetched from a hub, and the
MiniLM backbone is loaded once per session."""

import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture(scope="session")
def fresh_minilm():
    """A factory of untrained MiniLM rankers (head seeded), sharing one loaded backbone's weights."""
    pytest.importorskip("transformers")
    import copy

    from agents.ranker import Ranker

    base = Ranker.from_backbone("minilm-l6", seed=0)

    def make(seed: int = 0, max_length: int | None = 64) -> Ranker:
        import torch

        r = Ranker(base.tokenizer, copy.deepcopy(base.module), base.meta)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            r.module.head.reset_parameters()
        from dataclasses import replace
        r.meta = replace(base.meta, seed=seed, max_length=max_length or base.meta.max_length)
        return r

    return make


@pytest.fixture(autouse=True)
def one_torch_thread():
    """One intra-op thread: on a shared 2-core machine, two threads wait on each other several times over."""
    try:
        import torch
    except ImportError:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
