"""Random operation sequences against ``KVCacheManager`` on small pools.

A Hypothesis state machine opens sequences whose prompts share a few prefixes (so the
prefix cache really shares), grows them by random token counts, frees them into the
cache, swaps them out and in, and removes them, on pools small enough that eviction,
failed growth, failed swaps and host-copy dropping all happen. After every operation
``check_integrity()`` runs and a simple model is compared with the manager:
- which sequences exist, which are swapped, how many tokens each holds;
- what every block holds: the model writes token contents into GPU blocks as tokens are
  "computed" and moves them along the returned ``GroupMove`` lists, so a swap that
  forgets a block, a kept host copy that went stale, or a cached block that was reused
  for the wrong prefix shows up as wrong contents.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from gpu_backend.kv_manager import KVCacheManager

BS = 4
MAX_SEQS = 14
MAX_TOKENS = 120         # 30 blocks; the GPU has 64, the host 48
_rng = random.Random(1234)
PREFIXES = [tuple(_rng.randrange(10, 60) for _ in range(n)) for n in (13, 8, 21, 3)]


def out_token(pos: int) -> int:
    """Generated tokens depend only on the position, so equal prompts continue equally."""
    return 2 + pos % 3


class KVMachine(RuleBasedStateMachine):
    CACHING = True
    KEEP = True

    def __init__(self):
        super().__init__()
        self.kv = KVCacheManager(64, 48, BS, enable_prefix_caching=self.CACHING,
                                 keep_host_copies=self.KEEP)
        self.tokens: dict[int, list[int]] = {}     # model: the token sequence of each seq
        self.computed: dict[int, int] = {}         # model: tokens whose KV it holds
        self.swapped: dict[int, bool] = {}
        self.gpu_data: dict[int, tuple] = {}       # block id -> token contents it holds
        self.host_data: dict[int, tuple] = {}
        self.key_ids: dict[tuple, int] = {}
        self.next_id = 0

    # ------------------------------------------------------------------ helpers
    def keys(self, sid: int, nblocks: int) -> list[int]:
        toks = self.tokens[sid]
        return [self.key_ids.setdefault(tuple(toks[i * BS:(i + 1) * BS]), len(self.key_ids))
                for i in range(nblocks)]

    def want(self, sid: int, i: int) -> tuple:
        """Contents block ``i`` of ``sid`` must hold."""
        return tuple(self.tokens[sid][i * BS:min((i + 1) * BS, self.computed[sid])])

    def pick(self, i: int, swapped: bool | None = None, empty: bool | None = None) -> int:
        ids = sorted(s for s in self.tokens
                     if (swapped is None or self.swapped[s] == swapped)
                     and (empty is None or (self.computed[s] == 0 and not self.kv.seqs[s].block_table) == empty))
        return ids[i % len(ids)]

    def has(self, swapped: bool | None = None, empty: bool | None = None) -> bool:
        return any((swapped is None or self.swapped[s] == swapped)
                   and (empty is None or (self.computed[s] == 0 and not self.kv.seqs[s].block_table) == empty)
                   for s in self.tokens)

    def compute(self, sid: int, new_computed: int) -> None:
        """The model's forward pass: write the KV of tokens ``computed .. new_computed``."""
        seq = self.kv.seqs[sid]
        toks = self.tokens[sid]
        while len(toks) < new_computed:
            toks.append(out_token(len(toks)))
        old = self.computed[sid]
        self.computed[sid] = new_computed
        for i in range(old // BS, -(-new_computed // BS)):
            b = seq.block_table[i]
            # Nobody else may see a block that is being written: not the cache, not another seq.
            assert self.kv.gpu.ref_counts[b] == 1, f"seq {sid} writes block {b} held {self.kv.gpu.ref_counts[b]} times"
            self.gpu_data[b] = self.want(sid, i)

    def state(self):
        kv = self.kv
        return (list(kv.gpu.ref_counts), kv.gpu.free_runs(), list(kv.host.ref_counts),
                kv.host.free_runs(), kv.cache.num_cached_blocks, kv.cache.num_locked_blocks,
                list(kv._kept),
                {s.seq_id: (list(s.block_table), s.num_shared, s.locked_node, list(s.host_table),
                            s.host_valid, s.swapped) for s in kv.seqs.values()})

    def unlocked_path_blocks(self, keys: list[int]) -> int:
        """Blocks of the cached prefix of ``keys`` in nodes nobody has locked."""
        node, pos, count = self.kv.cache.root, 0, 0
        while pos < len(keys):
            child = node.children.get(keys[pos])
            if child is None:
                break
            n = 0
            while n < len(child.keys) and pos + n < len(keys) and child.keys[n] == keys[pos + n]:
                n += 1
            if child.lock_ref == 0:
                count += n
            pos += n
            if n < len(child.keys):
                break
            node = child
        return count

    # ------------------------------------------------------------------ rules
    @precondition(lambda self: len(self.tokens) < MAX_SEQS)
    @rule(prefix=st.integers(0, len(PREFIXES) - 1), suffix=st.lists(st.integers(0, 1), max_size=9))
    def new_seq(self, prefix, suffix):
        sid = self.next_id
        self.next_id += 1
        self.tokens[sid] = list(PREFIXES[prefix]) + suffix
        self.computed[sid] = 0
        self.swapped[sid] = False
        seq = self.kv.new_seq(sid)
        self._match(sid, seq)

    def _match(self, sid, seq):
        # As the engine does: keys of the full blocks before the last prompt token.
        keys = self.keys(sid, (len(self.tokens[sid]) - 1) // BS)
        peek = self.kv.peek_prefix_blocks(keys)
        got = self.kv.match(seq, keys)
        assert got == peek <= len(keys)
        assert len(seq.block_table) == got == seq.num_shared
        self.computed[sid] = got * BS

    @precondition(lambda self: self.has(swapped=False, empty=True))
    @rule(i=st.integers(0, 99))
    def rematch(self, i):
        sid = self.pick(i, swapped=False, empty=True)
        self._match(sid, self.kv.seqs[sid])

    @precondition(lambda self: self.has(swapped=False))
    @rule(i=st.integers(0, 99), delta=st.integers(1, 40))
    def grow(self, i, delta):
        sid = self.pick(i, swapped=False)
        seq = self.kv.seqs[sid]
        target = min(self.computed[sid] + delta, MAX_TOKENS)
        need = self.kv.blocks_for(target) - len(seq.block_table)
        possible = need <= self.kv.gpu.num_free + self.kv.cache.num_evictable_blocks
        before = self.state()
        ok = self.kv.grow(seq, target)
        assert ok == possible
        if ok:
            assert len(seq.block_table) == self.kv.blocks_for(target)
            self.compute(sid, target)
        else:
            assert self.state() == before

    @precondition(lambda self: self.has())
    @rule(i=st.integers(0, 99), remove=st.booleans())
    def free(self, i, remove):
        """Finish (remove) or preempt by recompute (free); full computed blocks are cached."""
        sid = self.pick(i)
        seq = self.kv.seqs[sid]
        keys = None if self.swapped[sid] else self.keys(sid, self.computed[sid] // BS)
        if remove:
            self.kv.remove(seq, keys)
            for d in (self.tokens, self.computed, self.swapped):
                del d[sid]
        else:
            self.kv.free(seq, keys)
            assert not seq.swapped and not seq.block_table and not seq.host_table
            self.computed[sid] = 0
            self.swapped[sid] = False

    @precondition(lambda self: self.has(swapped=False))
    @rule(i=st.integers(0, 99))
    def swap_out(self, i):
        sid = self.pick(i, swapped=False)
        kv = self.kv
        seq = kv.seqs[sid]
        table = list(seq.block_table)
        n, have, valid = len(table), len(seq.host_table), seq.host_valid
        extra = max(0, n - have)
        reclaim = sum(len(s.host_table) for k, s in kv._kept.items() if k != sid)
        possible = extra <= kv.host.num_free + reclaim
        before = self.state()
        moves = kv.swap_out(seq, self.computed[sid])
        if moves is None:
            assert not possible
            assert self.state() == before
            return
        assert possible
        start = min(valid, n)
        src = [m.src_start + j for m in moves for j in range(m.num_blocks)]
        dst = [m.dst_start + j for m in moves for j in range(m.num_blocks)]
        assert src == table[start:] and dst == seq.host_table[start:n]
        for s, d in zip(src, dst):
            assert kv.host.ref_counts[d] == 1
            self.host_data[d] = self.gpu_data[s]
        self.swapped[sid] = True
        assert seq.swapped and not seq.block_table and seq.locked_node is None
        for k in range(-(-self.computed[sid] // BS)):
            assert self.host_data[seq.host_table[k]] == self.want(sid, k), f"seq {sid} host block {k}"

    @precondition(lambda self: self.has(swapped=True))
    @rule(i=st.integers(0, 99), delta=st.integers(0, 5))
    def swap_in(self, i, delta):
        sid = self.pick(i, swapped=True)
        kv = self.kv
        seq = kv.seqs[sid]
        num_tokens = min(self.computed[sid] + delta, MAX_TOKENS)
        keys = self.keys(sid, self.computed[sid] // BS) if self.CACHING else []
        host_table = list(seq.host_table)       # dropped by swap_in without kept copies
        n_host = len(host_table)
        m = min(kv.peek_prefix_blocks(keys), n_host)
        need = max(n_host, kv.blocks_for(num_tokens)) - m
        possible = need <= kv.gpu.num_free + kv.cache.num_evictable_blocks - self.unlocked_path_blocks(keys[:m])
        before = self.state()
        moves = kv.swap_in(seq, keys, num_tokens)
        if moves is None:
            assert not possible
            assert self.state() == before
            return
        assert possible
        assert seq.num_shared == m and len(seq.block_table) == max(n_host, kv.blocks_for(num_tokens))
        src = [mv.src_start + j for mv in moves for j in range(mv.num_blocks)]
        dst = [mv.dst_start + j for mv in moves for j in range(mv.num_blocks)]
        assert src == host_table[m:n_host] and dst == seq.block_table[m:n_host]
        assert seq.host_table == (host_table if self.KEEP else [])
        for s, d in zip(src, dst):
            assert kv.gpu.ref_counts[d] == 1
            self.gpu_data[d] = self.host_data[s]
        self.swapped[sid] = False
        self._check_contents(sid)
        self.compute(sid, num_tokens)

    # ------------------------------------------------------------------ checks
    def _check_contents(self, sid):
        seq = self.kv.seqs[sid]
        for k in range(-(-self.computed[sid] // BS)):
            assert self.gpu_data.get(seq.block_table[k]) == self.want(sid, k), f"seq {sid} GPU block {k}"

    @invariant()
    def manager_agrees(self):
        kv = self.kv
        kv.check_integrity()
        assert set(kv.seqs) == set(self.tokens)
        for sid, seq in kv.seqs.items():
            assert seq.swapped == self.swapped[sid]
            assert seq.host_valid <= len(seq.host_table)
            nb = kv.blocks_for(self.computed[sid])
            if seq.swapped:
                assert seq.block_table == [] and len(seq.host_table) == nb
            else:
                assert len(seq.block_table) == nb
                self._check_contents(sid)
        # Every cached block holds the contents its path says.
        stack = [(kv.cache.root, ())]
        inv = {v: k for k, v in self.key_ids.items()}
        while stack:
            node, _ = stack.pop()
            for child in node.children.values():
                for key, b in zip(child.keys, child.blocks):
                    assert self.gpu_data.get(b) == inv[key], f"cached block {b}"
                stack.append((child, ()))


_SETTINGS = dict(derandomize=True, database=None, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

KVMachine.TestCase.settings = settings(max_examples=120, stateful_step_count=120, **_SETTINGS)
TestKVManagerRandomOps = KVMachine.TestCase


class KVMachineNoKeep(KVMachine):
    KEEP = False


KVMachineNoKeep.TestCase.settings = settings(max_examples=40, stateful_step_count=120, **_SETTINGS)
TestKVManagerRandomOpsNoKeptCopies = KVMachineNoKeep.TestCase


class KVMachineNoCache(KVMachine):
    CACHING = False


KVMachineNoCache.TestCase.settings = settings(max_examples=30, stateful_step_count=120, **_SETTINGS)
TestKVManagerRandomOpsNoPrefixCache = KVMachineNoCache.TestCase
