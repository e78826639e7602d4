"""Token sources and block keys: determinism, sharing exactly where content is shared, validation.

The prefix cache matches on ``block_keys``, so these tests pin the sharing every workload
relies on: equal content gives equal keys whatever the source type, different content
gives different keys, and a partial block never has a key.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from envs.live_request import Request
from envs.request import RequestSpec
from envs.tokens import (DEFAULT_VOCAB_SIZE, ConcatTokens, ExplicitTokens, HashBlockTokens, TokenSource,
                         UniqueTokens, counter_tokens, hash_token_blocks)
from tests.helpers import common_prefix

BS = 16



# ------------------------------------------------------------------ determinism
def test_same_source_same_tokens_and_keys_every_time():
    a, b = UniqueTokens(42, 1000), UniqueTokens(42, 1000)
    assert np.array_equal(a.token_ids(), b.token_ids())
    assert a.block_keys(BS) == b.block_keys(BS) == a.block_keys(BS)
    h1, h2 = HashBlockTokens([7, 8, 9], 1400), HashBlockTokens((7, 8, 9), 1400)
    assert np.array_equal(h1.token_ids(), h2.token_ids())
    assert h1.block_keys(BS) == h2.block_keys(BS)


def test_keys_are_the_same_in_a_fresh_process():
    """Keys mean the same content in every run (no per-process hash salt)."""
    code = ("from envs.tokens import UniqueTokens, HashBlockTokens;"
            "print(UniqueTokens(3, 100).block_keys(16));"
            "print(HashBlockTokens([5, 6], 700).block_keys(16)[-3:]);"
            "print(UniqueTokens(3, 10).token_ids().tolist())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    expected = "\n".join([str(UniqueTokens(3, 100).block_keys(16)),
                          str(HashBlockTokens([5, 6], 700).block_keys(16)[-3:]),
                          str(UniqueTokens(3, 10).token_ids().tolist())])
    assert out.strip() == expected


def test_token_generation_is_pinned():
    """'Fixed forever': a key must mean the same content in every run and every version."""
    assert UniqueTokens(0, 8).token_ids().tolist() == [0, 19568, 11935, 906, 23870, 17980, 20415, 19092]
    # generator blocks are keyed by their first counter; explicit tokens by their content
    assert UniqueTokens(0, 16).block_keys(16) == [14051758321573463536]
    assert UniqueTokens(0, 32).block_keys(16)[1] == 14051758321573463536 + 16
    assert ExplicitTokens(UniqueTokens(0, 16).token_ids()).block_keys(16) == [12849823522322149389]


def _reference_tokens(stream: int, start: int, length: int, vocab: int) -> list[int]:
    """The token generator in plain Python integers (mod 2**64)."""
    m64 = (1 << 64) - 1
    out = []
    for i in range(start, start + length):
        z = (i + stream * 0x9E3779B97F4A7C15) & m64
        z = (z * 0xBF58476D1CE4E5B9) & m64
        z ^= z >> 31
        z = (z * 0x94D049BB133111EB) & m64
        out.append(((z >> 32) * vocab) >> 32)
    return out


@pytest.mark.parametrize("stream,start", [(3, 0), (5, 1000), (1, 0)])
def test_counter_tokens_match_the_reference_also_where_counters_wrap(stream, start):
    # stream 1 starts 0x9E37...15 up, about 2**63.3: with a start near 2**64 minus that the counters wrap
    if stream == 1:
        start = (1 << 64) - 0x9E3779B97F4A7C15 - 5
    assert counter_tokens(stream, start, 12, 32000).tolist() == _reference_tokens(stream, start, 12, 32000)


def test_key_counts_and_partial_blocks():
    assert UniqueTokens(1, 15).block_keys(BS) == []
    assert len(UniqueTokens(1, 16).block_keys(BS)) == 1
    assert len(UniqueTokens(1, 47).block_keys(BS)) == 2
    assert len(UniqueTokens(1, 48).block_keys(BS)) == 3
    assert UniqueTokens(1, 0).block_keys(BS) == []
    # a key covers a whole block: extending a prompt never changes the keys of its full blocks
    assert UniqueTokens(1, 40).block_keys(BS) == UniqueTokens(1, 33).block_keys(BS)
    assert UniqueTokens(1, 48).block_keys(BS)[:2] == UniqueTokens(1, 40).block_keys(BS)


def test_offset_continues_the_same_stream():
    whole = UniqueTokens(9, 100)
    tail = UniqueTokens(9, 60, offset=40)
    assert np.array_equal(tail.token_ids(), whole.token_ids()[40:])
    assert ConcatTokens([UniqueTokens(9, 40), tail]).block_keys(BS) == whole.block_keys(BS)


# ------------------------------------------------------------------ distinct content
def test_unique_streams_differ():
    a, b = UniqueTokens(1, 4096), UniqueTokens(2, 4096)
    assert not np.array_equal(a.token_ids(), b.token_ids())
    assert not set(a.block_keys(BS)) & set(b.block_keys(BS))
    # and the stream is not a shifted copy of another one
    many = [UniqueTokens(s, 1024).block_keys(BS) for s in range(20)]
    flat = [k for keys in many for k in keys]
    assert len(set(flat)) == len(flat)


def test_blocks_inside_one_stream_are_distinct():
    keys = UniqueTokens(5, 16 * 500).block_keys(BS)
    assert len(set(keys)) == 500


def test_one_changed_token_changes_exactly_its_block_key():
    ids = UniqueTokens(3, 64).token_ids().copy()
    base = ExplicitTokens(ids).block_keys(BS)
    ids[37] = (ids[37] + 1) % DEFAULT_VOCAB_SIZE
    changed = ExplicitTokens(ids).block_keys(BS)
    assert [i for i in range(4) if base[i] != changed[i]] == [2]


# ------------------------------------------------------------------ concatenation
@pytest.mark.parametrize("len_a", [16, 64, 160])
def test_concat_starts_with_the_keys_of_a_block_aligned_first_part(len_a):
    a = UniqueTokens(11, len_a)
    b = UniqueTokens(12, 100)
    keys = ConcatTokens([a, b]).block_keys(BS)
    assert keys[: len_a // BS] == a.block_keys(BS)
    assert len(keys) == (len_a + 100) // BS
    # the rest are b's blocks when a is aligned
    assert keys[len_a // BS:] == b.block_keys(BS)


@pytest.mark.parametrize("len_a", [1, 15, 17, 100, 161])
def test_concat_of_an_unaligned_part_shares_exactly_its_full_blocks(len_a):
    a = UniqueTokens(11, len_a)
    ab = ConcatTokens([a, UniqueTokens(12, 100)]).block_keys(BS)
    ac = ConcatTokens([a, UniqueTokens(13, 100)]).block_keys(BS)
    full = len_a // BS
    assert ab[:full] == a.block_keys(BS)
    assert common_prefix(ab, ac) == full
    assert not set(ab[full:]) & set(ac[full:])


def test_pieces_that_continue_a_stream_are_keyed_as_the_stream():
    x = UniqueTokens(21, 300)
    pieces = ConcatTokens([UniqueTokens(21, 7), ConcatTokens([UniqueTokens(21, 143, offset=7)]),
                           UniqueTokens(21, 150, offset=150)])
    assert pieces.length == 300 and len(pieces) == 300
    assert np.array_equal(pieces.token_ids(), x.token_ids())
    assert pieces.block_keys(BS) == x.block_keys(BS)
    assert ConcatTokens([]).length == 0 and ConcatTokens([]).block_keys(BS) == []
    assert ConcatTokens([]).token_ids().shape == (0,)


def test_explicit_pieces_are_keyed_by_their_content():
    ids = UniqueTokens(21, 300).token_ids()
    pieces = ConcatTokens([ExplicitTokens(ids[:7]), ConcatTokens([ExplicitTokens(ids[7:150])]),
                           ExplicitTokens(ids[150:])])
    assert pieces.block_keys(BS) == ExplicitTokens(ids).block_keys(BS) == hash_token_blocks(ids, BS)


def test_a_block_across_two_unrelated_pieces_is_keyed_by_its_tokens():
    a, b = UniqueTokens(1, 10), UniqueTokens(2, 30)
    ab = ConcatTokens([a, b])
    keys = ab.block_keys(BS)
    ids = ab.token_ids()
    assert len(keys) == 2
    assert keys[0] == hash_token_blocks(ids[:16], BS)[0]                 # 10 tokens of a, 6 of b
    assert keys[1] == UniqueTokens(2, 22, offset=6).block_keys(BS)[0]    # tokens 6..21 of b
    # the same layout again gives the same keys; another second piece changes the blocks it touches
    assert ConcatTokens([a, UniqueTokens(2, 30)]).block_keys(BS) == keys
    other = ConcatTokens([a, UniqueTokens(3, 30)]).block_keys(BS)
    assert other[0] != keys[0] and other[1] != keys[1]


def test_hash_blocks_that_continue_each_other_are_one_run():
    # 24-token hash blocks: cache block 1 (tokens 16..31) straddles hash blocks 0 and 1
    consecutive = HashBlockTokens([5, 6], 48, hash_block_tokens=24).block_keys(BS)
    apart = HashBlockTokens([5, 7], 48, hash_block_tokens=24).block_keys(BS)
    assert consecutive[0] == apart[0]
    assert consecutive[1] != apart[1]
    assert HashBlockTokens([5, 7], 48, hash_block_tokens=24).token_ids()[16:32].tolist() != \
        HashBlockTokens([5, 6], 48, hash_block_tokens=24).token_ids()[16:32].tolist()
    # hash ids 5, 6 are counters 5*24.. and 6*24..: one run, keyed as one
    assert consecutive[1] == consecutive[0] + 16


# ------------------------------------------------------------------ explicit tokens
@pytest.mark.parametrize("src, shared", [(UniqueTokens(4, 333), []), (HashBlockTokens([1, 2, 3], 1100), []),
                                         (ConcatTokens([UniqueTokens(1, 20), HashBlockTokens([9], 300)]), [1])],
                         ids=["unique", "hash", "concat"])
def test_explicit_copy_is_keyed_by_content_not_as_the_generator(src, shared):
    copy = ExplicitTokens(src.token_ids())
    assert copy.length == src.length
    assert np.array_equal(copy.token_ids(), src.token_ids())
    assert copy.block_keys(BS) == hash_token_blocks(src.token_ids(), BS)
    assert ExplicitTokens(src.token_ids().tolist()).block_keys(BS) == copy.block_keys(BS)
    assert len(copy.block_keys(BS)) == len(src.block_keys(BS))
    # only a block that straddles two pieces is keyed by content in the source too
    assert [b for b, (x, y) in enumerate(zip(copy.block_keys(BS), src.block_keys(BS))) if x == y] == shared


@pytest.mark.parametrize("seed", range(5))
def test_equal_keys_only_for_equal_blocks(seed):
    """Random compositions of stream pieces (continuing or not), hash blocks and explicit copies:
    wherever two blocks have the same key, their tokens are the same."""
    rng = np.random.default_rng(seed)
    by_key: dict[int, bytes] = {}
    for _ in range(12):
        parts = []
        for _ in range(int(rng.integers(1, 5))):
            kind = int(rng.integers(0, 3))
            stream, off, n = int(rng.integers(0, 3)), int(rng.integers(0, 64)), int(rng.integers(1, 70))
            if kind == 0:
                parts.append(UniqueTokens(stream, n, offset=off))
            elif kind == 1:
                parts.append(HashBlockTokens([int(h) for h in rng.integers(0, 4, size=2)], 25 + n % 23,
                                             hash_block_tokens=24))
            else:
                parts.append(ExplicitTokens(UniqueTokens(stream, n, offset=off).token_ids()))
        src = ConcatTokens(parts)
        ids = src.token_ids()
        for b, key in enumerate(src.block_keys(BS)):
            content = ids[b * BS:(b + 1) * BS].tobytes()
            assert by_key.setdefault(key, content) == content
    assert len(by_key) > 20


def test_explicit_tokens_keep_the_given_ids():
    t = ExplicitTokens([5, 0, 31999, 7])
    assert t.token_ids().tolist() == [5, 0, 31999, 7]
    assert t.token_ids().dtype == np.int64
    assert ExplicitTokens([]).length == 0


# ------------------------------------------------------------------ hash blocks (Mooncake)
def test_hash_blocks_share_exactly_the_common_hash_prefix():
    per = 512 // BS  # 32 cache blocks per hash block
    a = HashBlockTokens([10, 20, 30, 40], 1900)
    b = HashBlockTokens([10, 20, 31, 40], 2048)
    c = HashBlockTokens([10, 20], 1000)
    ka, kb, kc = a.block_keys(BS), b.block_keys(BS), c.block_keys(BS)
    assert len(ka) == 1900 // BS and len(kb) == 2048 // BS and len(kc) == 1000 // BS
    assert common_prefix(ka, kb) == 2 * per             # the blocks of hash ids 10 and 20, no more
    assert not set(ka[2 * per:3 * per]) & set(kb[2 * per:3 * per])
    # hash id 40 is the same content in both, so its blocks have equal keys; the prefix cache matches
    # a chain from the root, which breaks at hash id 30/31 (see the engine test below)
    assert ka[3 * per:] == kb[3 * per:len(ka)]
    # a shorter request whose ids are a prefix shares all of its full blocks
    assert kc == ka[: len(kc)]
    # the token content of each hash block is the same whatever comes after it
    assert np.array_equal(a.token_ids()[:1024], b.token_ids()[:1024])
    assert not np.array_equal(a.token_ids()[1024:1536], b.token_ids()[1024:1536])


def test_hash_blocks_with_a_different_first_id_share_nothing():
    a = HashBlockTokens([1, 2, 3], 1536)
    b = HashBlockTokens([99, 2, 3], 1536)
    ka, kb = a.block_keys(BS), b.block_keys(BS)
    assert ka[0] != kb[0]
    # keys at the same position after the first block: 2 and 3 are the same blocks of content...
    assert np.array_equal(a.token_ids()[512:], b.token_ids()[512:])
    # ... but the prefix cache matches a chain from the root, and that chain breaks at block 0
    assert common_prefix(ka, kb) == 0


@pytest.mark.parametrize("first, second, cached", [
    ([10, 20, 30, 40], [10, 20, 31, 40], 1024),   # two common 512-token blocks
    ([10, 20, 30], [10, 20, 30, 40], 1536),       # the whole first prompt
    ([10, 20, 30], [11, 20, 30], 0),              # a different first hash id: nothing
])
def test_engine_prefix_cache_serves_exactly_the_common_hash_blocks(first, second, cached):
    import baselines  # noqa: F401
    from envs.engine import ServingEngine
    from envs.engine_config import EngineConfig
    from envs.policy import make_policy
    from gpu_backend.sim_executor import SimExecutor

    specs = [RequestSpec(0, 0, 0.0, HashBlockTokens(first, 512 * len(first)), 4),
             RequestSpec(1, 0, 5.0, HashBlockTokens(second, 512 * len(second) - 100), 4)]
    eng = ServingEngine(SimExecutor("h100-llama-8b"), make_policy("fcfs"), EngineConfig())
    eng.load(specs)
    eng.run()
    assert [r.cached_tokens for r in eng.records] == [0, cached]


def test_hash_block_partial_last_block_and_block_size():
    h = HashBlockTokens([4, 5], 513)
    assert h.length == 513 and len(h.token_ids()) == 513
    assert np.array_equal(h.token_ids()[:512], HashBlockTokens([4], 512).token_ids())
    small = HashBlockTokens([4, 5], 40, hash_block_tokens=32)
    assert small.length == 40
    assert np.array_equal(small.token_ids()[:32], HashBlockTokens([4], 32, hash_block_tokens=32).token_ids())


def test_hash_blocks_differ_from_unique_streams():
    h = HashBlockTokens(list(range(8)), 4096).block_keys(BS)
    u = UniqueTokens(0, 4096).block_keys(BS)
    assert not set(h) & set(u)


# ------------------------------------------------------------------ vocabulary range
@pytest.mark.parametrize("vocab", [1, 2, 7, 1000, DEFAULT_VOCAB_SIZE, 152064])
def test_token_ids_lie_in_the_vocabulary(vocab):
    n = 20_480  # 40 hash blocks of 512
    for src in (UniqueTokens(3, n, vocab_size=vocab), HashBlockTokens(list(range(40)), n, vocab_size=vocab)):
        ids = src.token_ids()
        assert ids.dtype == np.int64 and ids.shape == (n,)
        assert ids.min() >= 0 and ids.max() < vocab
        if vocab <= 1000:
            assert len(np.unique(ids)) == vocab  # the whole vocabulary is used
    assert counter_tokens(1, 0, 0, 10).shape == (0,)


def test_default_vocabulary():
    ids = UniqueTokens(8, 100_000).token_ids()
    assert ids.min() >= 0 and ids.max() < DEFAULT_VOCAB_SIZE == 32000
    assert len(np.unique(ids)) > 30000


# ------------------------------------------------------------------ bad input
def test_negative_token_ids_are_rejected_naming_the_value():
    with pytest.raises(ValueError, match="-3"):
        ExplicitTokens([1, -3, 2])
    with pytest.raises(ValueError, match="-1"):
        ExplicitTokens(np.array([-1]))


def test_two_dimensional_ids_are_rejected_naming_the_shape():
    with pytest.raises(ValueError, match=r"\(2, 2\)"):
        ExplicitTokens([[1, 2], [3, 4]])
    with pytest.raises(ValueError, match=r"\(\)"):
        ExplicitTokens(np.int64(5))


def test_negative_length_is_rejected_naming_the_value():
    with pytest.raises(ValueError, match="-5"):
        UniqueTokens(0, -5)
    with pytest.raises(ValueError, match="-1"):
        TokenSource(-1)


@pytest.mark.parametrize("ids, length", [([1, 2], 2000), ([1, 2, 3], 600), ([1], 0), ([], 5)])
def test_hash_ids_that_cannot_hold_the_length_are_rejected(ids, length):
    with pytest.raises(ValueError, match=rf"{len(ids)} hash blocks .*{length} tokens"):
        HashBlockTokens(ids, length)


def test_negative_hash_ids_are_rejected_naming_the_value():
    with pytest.raises(ValueError, match="-7"):
        HashBlockTokens([3, -7], 600)


def test_an_empty_vocabulary_is_rejected():
    with pytest.raises(ValueError, match="vocab"):
        UniqueTokens(1, 10, vocab_size=0)


def test_non_integer_token_ids_are_rejected():
    with pytest.raises(ValueError, match="1.5"):
        ExplicitTokens([1.5, 2])


def test_block_size_beyond_the_supported_maximum():
    with pytest.raises(ValueError, match="2048"):
        hash_token_blocks(np.zeros(4096, dtype=np.int64), 2048)


# ------------------------------------------------------------------ Request.block_keys
def _req(rid: int, prompt, out: int, output_tokens=None) -> Request:
    return Request(RequestSpec(rid, 0, 0.0, prompt, out, output_tokens=output_tokens), 0.0)


def test_generated_blocks_are_unique_per_request():
    prompt = UniqueTokens(50, 100)  # 6 full blocks, the 7th is part prompt, part output
    a, b = _req(1, prompt, 60), _req(2, prompt, 60)
    ka, kb = a.block_keys(10, BS), b.block_keys(10, BS)
    assert ka[:6] == kb[:6] == prompt.block_keys(BS)
    assert not set(ka[6:]) & set(kb[6:])
    assert len(set(ka)) == 10
    # stable for the same request: a recompute finds its own blocks
    assert a.block_keys(10, BS) == ka
    a.drop_keys()
    assert a.block_keys(10, BS) == ka
    assert a.block_keys(8, BS) == ka[:8]
    assert a.block_keys(3, BS) == ka[:3]


def test_known_response_content_is_shared_with_the_next_turn():
    prompt = UniqueTokens(50, 100)
    response = UniqueTokens(51, 60)
    first = _req(1, prompt, 60, output_tokens=response)
    other = _req(2, prompt, 60, output_tokens=response)
    next_turn = _req(3, ConcatTokens([prompt, response, UniqueTokens(52, 40)]), 10)
    n = (100 + 60) // BS  # 10 full blocks of prompt + response
    k1 = first.block_keys(n, BS)
    assert k1 == other.block_keys(n, BS)
    assert next_turn.block_keys(n, BS) == k1
    assert k1 == ConcatTokens([prompt, response]).block_keys(BS)
    # a request that does not know its response shares only the prompt blocks
    blind = _req(4, prompt, 60)
    assert common_prefix(blind.block_keys(n, BS), k1) == 6
    # the content ends with the response: no more blocks than it holds
    with pytest.raises(ValueError, match="11 blocks"):
        _req(5, prompt, 60, output_tokens=response).block_keys(11, BS)


def test_request_keys_follow_real_sampled_tokens():
    prompt = UniqueTokens(50, 100)
    a, b = _req(1, prompt, 60), _req(2, prompt, 60)
    sampled = UniqueTokens(77, 40).token_ids().tolist()
    a.output_token_ids = list(sampled)
    b.output_token_ids = list(sampled)
    n = (100 + 40) // BS
    assert a.block_keys(n, BS) == b.block_keys(n, BS) == ConcatTokens(
        [prompt, ExplicitTokens(sampled)]).block_keys(BS)
