"""Prompt content as token ids, and the per-block content keys the prefix cache matches on.

Why this exists: the radix prefix cache must see exactly the sharing that real prompts
have (a shared document, a conversation history, Mooncake's hashed 512-token blocks),
yet the simulator must not hold every prompt of a 12,000-request trace in memory as
token arrays. A ``TokenSource`` describes a prompt's content compactly and produces its
token ids on demand; ``block_keys`` hashes every full KV block of those tokens into one
64-bit key. Two sources with the same token content give the same keys, whatever kind
of source they are, so a multi-turn prompt built by concatenation hits the blocks cached
by the turn before it.

All generation is deterministic (a counter-based multiply-xorshift hash), so a seed fully
determines every token.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

DEFAULT_VOCAB_SIZE = 32000

_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S29, _S31, _S32 = np.uint64(29), np.uint64(31), np.uint64(32)

# One 64-bit multiplier per position inside a block; fixed forever, because a key must
# mean the same content in every run.
_POSITION_MULTIPLIERS = np.random.default_rng(0x5EED).integers(
    -(2**62), 2**62, size=1024, dtype=np.int64) | np.int64(1)

# Every numpy call on arrays this small costs about a microsecond whatever its size, and
# a prompt's tokens and keys are computed once per admitted request: the functions below
# use as few calls as give well-mixed values.


def _tokens_from_counters(z: np.ndarray, vocab_size: int) -> np.ndarray:
    """Tokens in ``[0, vocab_size)`` from distinct uint64 counters (two multiply-xorshift rounds), in place."""
    z *= _MIX1
    z ^= z >> _S31
    z *= _MIX2
    z >>= _S32
    z *= np.uint64(vocab_size)
    z >>= _S32
    return z.view(np.int64)


def counter_tokens(stream: int, start: int, length: int, vocab_size: int) -> np.ndarray:
    """Tokens ``start .. start+length`` of the pseudo-random token stream ``stream``."""
    if length <= 0:
        return np.zeros(0, dtype=np.int64)
    first = (start + stream * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    if first + length <= 1 << 64:
        z = np.arange(first, first + length, dtype=np.uint64)
    else:  # the counters wrap around 2**64
        z = np.arange(start, start + length, dtype=np.uint64)
        z += np.uint64((stream * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF)
    return _tokens_from_counters(z, vocab_size)


def hash_token_blocks(tokens: np.ndarray, block_size: int) -> list[int]:
    """One 64-bit content key per *full* block of ``tokens`` (a partial tail has none)."""
    num_full = len(tokens) // block_size
    if num_full == 0:
        return []
    if block_size > len(_POSITION_MULTIPLIERS):
        raise ValueError(f"block_size {block_size} exceeds the supported maximum {len(_POSITION_MULTIPLIERS)}")
    blocks = tokens[: num_full * block_size].astype(np.int64, copy=False).reshape(num_full, block_size)
    keys = (blocks @ _POSITION_MULTIPLIERS[:block_size]).view(np.uint64)
    keys ^= keys >> _S29
    keys *= _MIX2
    return keys.tolist()


def _check_vocab(vocab_size: int) -> int:
    v = int(vocab_size)
    if v < 1:
        raise ValueError(f"vocab_size must be >= 1, got {vocab_size}")
    return v


class TokenSource:
    """A prompt's (or response's) content: its length, its token ids, its block keys."""

    __slots__ = ("length",)

    def __init__(self, length: int):
        if length < 0:
            raise ValueError(f"token length must be >= 0, got {length}")
        self.length = int(length)

    def token_ids(self) -> np.ndarray:
        raise NotImplementedError

    def block_keys(self, block_size: int) -> list[int]:
        """Content keys of the full blocks. Not cached here: a trace's prompts would not fit in memory
        as key lists; the engine keeps the keys of live requests only."""
        return hash_token_blocks(self.token_ids(), block_size)

    def __len__(self) -> int:
        return self.length


class ExplicitTokens(TokenSource):
    """Token ids given outright (a tokenised real prompt, a known response)."""

    __slots__ = ("_ids",)

    def __init__(self, ids: Sequence[int] | np.ndarray):
        raw = np.asarray(ids)
        if raw.size and not np.issubdtype(raw.dtype, np.integer):
            raise ValueError(f"token ids must be integers, got dtype {raw.dtype} (e.g. {raw.ravel()[0]!r})")
        arr = raw.astype(np.int64, copy=False)
        if arr.ndim != 1:
            raise ValueError(f"token ids must be one-dimensional, got shape {arr.shape}")
        if arr.size and arr.min() < 0:
            raise ValueError(f"token ids must be >= 0, got minimum {int(arr.min())}")
        super().__init__(len(arr))
        self._ids = arr

    def token_ids(self) -> np.ndarray:
        return self._ids


class UniqueTokens(TokenSource):
    """Content no other stream shares: ``length`` tokens of pseudo-random stream ``stream``."""

    __slots__ = ("stream", "vocab_size", "offset")

    def __init__(self, stream: int, length: int, vocab_size: int = DEFAULT_VOCAB_SIZE, offset: int = 0):
        super().__init__(length)
        self.stream = int(stream)
        self.vocab_size = _check_vocab(vocab_size)
        self.offset = int(offset)

    def token_ids(self) -> np.ndarray:
        return counter_tokens(self.stream, self.offset, self.length, self.vocab_size)


class HashBlockTokens(TokenSource):
    """Mooncake-style content: each hash id stands for one fixed block of ``hash_block_tokens`` tokens.

    Requests whose hash-id lists share a prefix share those token blocks exactly, so the
    prefix cache sees the trace's real sharing. The last hash block may be partial.
    """

    __slots__ = ("hash_ids", "hash_block_tokens", "vocab_size")

    _STREAM_SALT = 0x4D6F6F6E63616B65  # "Mooncake"

    def __init__(self, hash_ids: Sequence[int], length: int, hash_block_tokens: int = 512,
                 vocab_size: int = DEFAULT_VOCAB_SIZE):
        super().__init__(length)
        self.hash_ids = tuple(int(h) for h in hash_ids)
        bad = [h for h in self.hash_ids if h < 0]
        if bad:
            raise ValueError(f"hash ids must be >= 0, got {bad[0]}")
        self.hash_block_tokens = int(hash_block_tokens)
        if self.hash_block_tokens < 1:
            raise ValueError(f"hash_block_tokens must be >= 1, got {hash_block_tokens}")
        self.vocab_size = _check_vocab(vocab_size)
        capacity = len(self.hash_ids) * self.hash_block_tokens
        if length > capacity or length <= capacity - self.hash_block_tokens:
            raise ValueError(
                f"{len(self.hash_ids)} hash blocks of {self.hash_block_tokens} tokens cannot hold "
                f"a prompt of {length} tokens")

    def token_ids(self) -> np.ndarray:
        n = self.hash_block_tokens
        ids = np.asarray(self.hash_ids, dtype=np.uint64)[:, None] * np.uint64(n)
        counters = (ids + np.arange(n, dtype=np.uint64)[None, :]).ravel()[: self.length]
        counters += np.uint64(self._STREAM_SALT)
        return _tokens_from_counters(counters, self.vocab_size)


class ConcatTokens(TokenSource):
    """Several sources one after another (system prompt + document + question, a chat history)."""

    __slots__ = ("parts",)

    def __init__(self, parts: Sequence[TokenSource]):
        self.parts = tuple(parts)
        super().__init__(sum(p.length for p in self.parts))

    def token_ids(self) -> np.ndarray:
        if not self.parts:
            return np.zeros(0, dtype=np.int64)
        return np.concatenate([p.token_ids() for p in self.parts]).astype(np.int64, copy=False)
