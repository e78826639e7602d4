"""Prompt content as token ids, and the per-block keys the prefix cache matches on.

Why this exists: the radix prefix cache must see exactly the sharing that real prompts
have (a shared document, a conversation history, Mooncake's hashed 512-token blocks),
yet the simulator must not hold every prompt of a 12,000-request trace in memory as
token arrays. A ``TokenSource`` describes a prompt's content compactly and produces its
token ids on demand; ``block_keys`` gives every full KV block one 64-bit key, equal for
two blocks exactly when their content is the same:

- synthetic content is generated from a counter: token i of a stream is a fixed function
  of counter ``first + i`` (a multiply-xorshift hash), so a block made of ``block_size``
  consecutive counters *is* its first counter. Its key is that counter (plus a constant
  per vocabulary and block size), computed without generating a token. Two such blocks
  have the same key if and only if they are the same counters, hence the same tokens;
- any other block (explicit tokens: a tokenised real prompt, real sampled output; or a
  block that straddles two unrelated pieces of content) is keyed by hashing its tokens.

A multi-turn prompt built by concatenation therefore hits the blocks cached by the turn
before it, and Mooncake requests share exactly their common hash-id prefix. An explicit
copy of synthetic tokens is keyed by its content and does not match the generator's
coordinate keys; no workload makes such copies (the simulator's hot path never
generates tokens at all, which is what makes these keys cheap).

All generation is deterministic, so a seed fully determines every token and key.
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

_M64 = (1 << 64) - 1
_STREAM_STRIDE = 0x9E3779B97F4A7C15   # stream s starts at counter s * stride (mod 2**64)


def _coordinate_salt(vocab_size: int, block_size: int) -> int:
    """Added to a block's first counter to make its key: blocks of other vocabularies or sizes differ."""
    return ((vocab_size * 0xD6E8FEB86659FD93) ^ (block_size * 0xA0761D6478BD642F)) & _M64


def counter_block_keys(first_counter: int, length: int, vocab_size: int, block_size: int) -> list[int]:
    """Keys of the full blocks of ``length`` generator tokens starting at ``first_counter``."""
    n = length // block_size
    if n <= 0:
        return []
    k0 = (first_counter + _coordinate_salt(vocab_size, block_size)) & _M64
    end = k0 + n * block_size
    if end <= 1 << 64:
        return list(range(k0, end, block_size))
    return [(k0 + b * block_size) & _M64 for b in range(n)]   # the counters wrap around 2**64


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
    return _counter_run_tokens((start + stream * _STREAM_STRIDE) & _M64, length, vocab_size)


def _counter_run_tokens(first: int, length: int, vocab_size: int) -> np.ndarray:
    """The tokens of counters ``first .. first+length`` (mod 2**64)."""
    if first + length <= 1 << 64:
        z = np.arange(first, first + length, dtype=np.uint64)
    else:  # the counters wrap around 2**64
        z = np.arange(length, dtype=np.uint64)
        z += np.uint64(first)
    return _tokens_from_counters(z, vocab_size)


def hash_token_blocks(tokens: np.ndarray, block_size: int) -> list[int]:
    """One 64-bit content key per *full* block of explicit ``tokens`` (a partial tail has none)."""
    num_full = len(tokens) // block_size
    if num_full == 0:
        return []
    return _hash_block_rows(tokens[: num_full * block_size].astype(np.int64, copy=False)
                            .reshape(num_full, block_size))


def _hash_block_rows(blocks: np.ndarray) -> list[int]:
    block_size = blocks.shape[1]
    if block_size > len(_POSITION_MULTIPLIERS):
        raise ValueError(f"block_size {block_size} exceeds the supported maximum {len(_POSITION_MULTIPLIERS)}")
    keys = (blocks @ _POSITION_MULTIPLIERS[:block_size]).view(np.uint64)
    keys ^= keys >> _S29
    keys *= _MIX2
    return keys.tolist()


def _run_length(run: tuple) -> int:
    return len(run[1]) if run[0] is None else run[1]


def _merge_runs(runs: Sequence[tuple]) -> list[tuple]:
    """Adjacent explicit pieces joined; adjacent generator pieces joined where the counters continue."""
    out: list[tuple] = []
    for run in runs:
        if _run_length(run) == 0:
            continue
        if out:
            last = out[-1]
            if run[0] is None and last[0] is None:
                out[-1] = (None, np.concatenate([last[1], run[1]]))
                continue
            if (run[0] is not None and last[0] is not None and last[2] == run[2]
                    and (last[0] + last[1]) & _M64 == run[0]):
                out[-1] = (last[0], last[1] + run[1], last[2])
                continue
        out.append(run)
    return out


def keys_of_runs(runs: Sequence[tuple], block_size: int) -> list[int]:
    """Block keys of content given as runs (``TokenSource.runs``): a block inside one generator run is
    keyed by its first counter, any other block by hashing its tokens."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    merged = _merge_runs(runs)
    n = sum(_run_length(r) for r in merged) // block_size
    keys: list[int | None] = [None] * n
    pos = 0
    for run in merged:
        end = pos + _run_length(run)
        if run[0] is not None:
            lo = -(-pos // block_size)
            hi = min(end // block_size, n)
            if hi > lo:
                keys[lo:hi] = counter_block_keys(run[0] + lo * block_size - pos, (hi - lo) * block_size,
                                                 run[2], block_size)
        pos = end
    missing = [b for b in range(n) if keys[b] is None]
    if missing:
        tokens = np.concatenate([r[1] if r[0] is None else _counter_run_tokens(r[0], r[1], r[2])
                                 for r in merged]).astype(np.int64, copy=False)
        rows = tokens[: n * block_size].reshape(n, block_size)[missing]
        for b, key in zip(missing, _hash_block_rows(rows)):
            keys[b] = key
    return keys  # type: ignore[return-value]


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

    def runs(self) -> list[tuple]:
        """The content as pieces: ``(first_counter, length, vocab_size)`` for generator tokens,
        ``(None, token_ids)`` for explicit ones."""
        return [(None, self.token_ids())]

    def block_keys(self, block_size: int) -> list[int]:
        """Keys of the full blocks (see the module docstring). Not cached here: a trace's prompts would
        not fit in memory as key lists; the engine keeps the keys of live requests only."""
        return keys_of_runs(self.runs(), block_size)

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

    def runs(self) -> list[tuple]:
        return [(None, self._ids)]

    def block_keys(self, block_size: int) -> list[int]:
        return hash_token_blocks(self._ids, block_size)


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

    def _first_counter(self) -> int:
        return (self.offset + self.stream * _STREAM_STRIDE) & _M64

    def runs(self) -> list[tuple]:
        return [(self._first_counter(), self.length, self.vocab_size)]

    def block_keys(self, block_size: int) -> list[int]:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        return counter_block_keys(self._first_counter(), self.length, self.vocab_size, block_size)


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

    def runs(self) -> list[tuple]:
        n = self.hash_block_tokens
        last = len(self.hash_ids) - 1
        return [((h * n + self._STREAM_SALT) & _M64, n if i < last else self.length - last * n, self.vocab_size)
                for i, h in enumerate(self.hash_ids)]

    def block_keys(self, block_size: int) -> list[int]:
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        if self.hash_block_tokens % block_size:
            return keys_of_runs(self.runs(), block_size)  # some cache blocks straddle two hash blocks
        keys: list[int] = []
        for first, length, vocab in self.runs():   # each hash block is whole cache blocks
            keys += counter_block_keys(first, length, vocab, block_size)
        return keys


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

    def runs(self) -> list[tuple]:
        return [run for p in self.parts for run in p.runs()]
