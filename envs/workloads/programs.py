"""Per-client prompt programs: what each request's prompt contains, and so what it shares.

Why this exists: prefix-aware schedulers (LPM, DLPM, D²LPM) only differ from FCFS when
prompts share prefixes, and how they share them matters: one system prompt for all of a
client's requests, one long document behind many questions, a conversation whose every
turn re-sends the whole history. A program turns a client's arrival times and drawn
lengths into ``DraftRequest``s whose ``TokenSource``s carry exactly that sharing, and no
more: every piece of fresh content comes from its own token stream, so unrelated
requests never share a block by accident.

Lengths: the client's ``prompt_len`` draw is the length of the text the client writes
fresh for a request (the question); shared parts (system prompt, document, history)
come on top of it. Programs that take their own ``question_len`` use it instead where
documented.
"""

from __future__ import annotations

import hashlib
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from envs.tokens import ConcatTokens, TokenSource, UniqueTokens
from envs.workloads.lengths import Constant, LengthDist

_MASK64 = (1 << 64) - 1


def mix64(x: int) -> int:
    """splitmix64's finaliser on a Python int: a fixed, well-spread 64-bit hash."""
    x &= _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def name_key(name: str) -> int:
    """A stable 64-bit key for a name (Python's ``hash`` of a str changes between runs)."""
    return int.from_bytes(hashlib.blake2b(name.encode("utf-8"), digest_size=8).digest(), "little")


class StreamIds:
    """Fresh token-stream ids for one client of one workload under one seed.

    Ids are hashes of (workload, seed, client, counter), so two clients, two seeds or two
    workloads never draw the same content.
    """

    def __init__(self, workload_key: int, seed: int, client_id: int):
        self._base = mix64(mix64(mix64(workload_key) ^ seed) ^ (client_id + 1))
        self._counter = 0

    def next(self) -> int:
        self._counter += 1
        return mix64(self._base ^ self._counter)


@dataclass(frozen=True, slots=True)
class DraftRequest:
    """One request of one client before the workload assigns global request ids.

    ``parent`` is the index of the parent request in the same client's draft list; the
    parent always comes earlier in that list.
    """

    arrival_time: float
    prompt: TokenSource
    output_len: int
    output_tokens: TokenSource | None = None
    parent: int | None = None
    think_time_s: float = 0.0


@dataclass(frozen=True)
class ClientDraws:
    """What the client has already drawn for its root requests, one entry each."""

    arrival_times: np.ndarray
    prompt_lens: np.ndarray
    output_lens: np.ndarray


class PromptProgram(ABC):
    """Builds one client's requests from its draws."""

    @abstractmethod
    def build(self, draws: ClientDraws, rng: np.random.Generator, streams: StreamIds,
              prompt_len: LengthDist, output_len: LengthDist) -> list[DraftRequest]:
        """Draft requests, parents before children.

        ``prompt_len`` and ``output_len`` are the client's distributions, for programs that
        make more requests than there are arrivals (follow-up turns).
        """


def _as_dist(value: int | LengthDist, owner: str, name: str) -> LengthDist:
    if isinstance(value, LengthDist):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return Constant(int(value))
    raise TypeError(f"{owner}: {name} must be an int or a LengthDist, got {value!r}")


@dataclass(frozen=True)
class NoSharing(PromptProgram):
    """Every prompt is fresh content: no prefix is ever shared (the worst case for a prefix cache)."""

    def build(self, draws, rng, streams, prompt_len, output_len):
        return [DraftRequest(float(t), UniqueTokens(streams.next(), int(p)), int(o))
                for t, p, o in zip(draws.arrival_times, draws.prompt_lens, draws.output_lens)]


@dataclass(frozen=True)
class SystemPrompt(PromptProgram):
    """One system prompt of ``system_len`` tokens, shared by all of the client's requests, before each question.

    Prompt length = ``system_len`` + the client's ``prompt_len`` draw.
    """

    system_len: int

    def __post_init__(self) -> None:
        if int(self.system_len) != self.system_len or self.system_len < 1:
            raise ValueError(f"SystemPrompt: system_len must be an integer >= 1, got {self.system_len!r}")

    def build(self, draws, rng, streams, prompt_len, output_len):
        system = UniqueTokens(streams.next(), int(self.system_len))
        return [DraftRequest(float(t), ConcatTokens([system, UniqueTokens(streams.next(), int(p))]), int(o))
                for t, p, o in zip(draws.arrival_times, draws.prompt_lens, draws.output_lens)]


@dataclass(frozen=True)
class SharedDocument(PromptProgram):
    """A long document followed by a question; ``questions_per_doc`` consecutive requests ask about one document.

    After that many questions the client moves to a new document (new content, no
    sharing with the old one). ``doc_len`` is an int or a distribution drawn once per
    document. The question length is drawn from ``question_len``, or is the client's
    ``prompt_len`` draw when ``question_len`` is None.
    """

    doc_len: int | LengthDist
    questions_per_doc: int
    question_len: LengthDist | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "doc_len", _as_dist(self.doc_len, "SharedDocument", "doc_len"))
        if int(self.questions_per_doc) != self.questions_per_doc or self.questions_per_doc < 1:
            raise ValueError(
                f"SharedDocument: questions_per_doc must be an integer >= 1, got {self.questions_per_doc!r}")

    def build(self, draws, rng, streams, prompt_len, output_len):
        n = len(draws.arrival_times)
        num_docs = math.ceil(n / self.questions_per_doc)
        doc_lens = self.doc_len.sample(rng, num_docs)
        questions = draws.prompt_lens if self.question_len is None else self.question_len.sample(rng, n)
        docs = [UniqueTokens(streams.next(), int(length)) for length in doc_lens]
        return [DraftRequest(float(draws.arrival_times[i]),
                             ConcatTokens([docs[i // self.questions_per_doc],
                                           UniqueTokens(streams.next(), int(questions[i]))]),
                             int(draws.output_lens[i]))
                for i in range(n)]


@dataclass(frozen=True)
class MultiTurn(PromptProgram):
    """Conversations whose history grows: each arrival starts a conversation of ``turns`` turns.

    Turn 1's prompt is a question of the client's ``prompt_len`` draw. Turn k+1's prompt
    is turn k's prompt, then turn k's response, then a new question of ``question_len``
    tokens (the client's ``prompt_len`` when None), so it begins with every block turn k
    used. Turn k+1 waits for turn k (``parent``) plus ``think_time_s`` of user thinking;
    its ``arrival_time`` is the conversation's start, the earliest it could be sent.
    Every turn carries its response content as ``output_tokens`` so that the engine can
    cache it; follow-up response lengths come from the client's ``output_len``.
    """

    turns: int | LengthDist
    question_len: LengthDist | None = None
    think_time_s: float = 0.0

    def __post_init__(self) -> None:
        object.__setattr__(self, "turns", _as_dist(self.turns, "MultiTurn", "turns"))
        if not (math.isfinite(self.think_time_s) and self.think_time_s >= 0.0):
            raise ValueError(f"MultiTurn: think_time_s must be a finite number >= 0, got {self.think_time_s!r}")

    def build(self, draws, rng, streams, prompt_len, output_len):
        n = len(draws.arrival_times)
        turns = self.turns.sample(rng, n)
        num_follow = int(turns.sum()) - n
        questions = (prompt_len if self.question_len is None else self.question_len).sample(rng, num_follow)
        answers = output_len.sample(rng, num_follow)
        out: list[DraftRequest] = []
        f = 0
        for i in range(n):
            start = float(draws.arrival_times[i])
            history: list[TokenSource] = []
            question_len, answer_len, parent = int(draws.prompt_lens[i]), int(draws.output_lens[i]), None
            for k in range(int(turns[i])):
                if k > 0:
                    question_len, answer_len = int(questions[f]), int(answers[f])
                    f += 1
                history.append(UniqueTokens(streams.next(), question_len))
                response = UniqueTokens(streams.next(), answer_len)
                out.append(DraftRequest(start, ConcatTokens(list(history)), answer_len,
                                        output_tokens=response, parent=parent,
                                        think_time_s=self.think_time_s if k > 0 else 0.0))
                history.append(response)
                parent = len(out) - 1
        return out
