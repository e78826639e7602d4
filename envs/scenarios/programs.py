"""Prompt programs the DLPM evaluation needs beyond ``envs.workloads.programs``: tree-of-thought fan-out.

Why: DLPM (Cao et al. 2025, ``../shared/papers.md`` §3.4, Fig 6) evaluates on per-client
execution graphs; Tree-of-Thoughts on GSM8K shares prefixes along a tree — every branch
re-sends the problem and the thoughts above it — which neither a shared document (one
level) nor a conversation (one chain) reproduces.
"""

from __future__ import annotations

from dataclasses import dataclass

from envs.tokens import ConcatTokens, TokenSource, UniqueTokens
from envs.workloads.lengths import LengthDist
from envs.workloads.programs import DraftRequest, PromptProgram


@dataclass(frozen=True)
class TreeOfThought(PromptProgram):
    """Each arrival starts a tree of thoughts: ``branching`` children per node, ``depth`` levels below the root.

    The root's prompt is the client's instruction (``instruction_len`` tokens, shared by
    all of the client's trees) followed by the problem (the client's ``prompt_len``
    draw); it answers with a thought. A child's prompt is its parent's prompt, the
    parent's thought, and a short step prompt of ``step_len`` tokens (one per child, so
    siblings share exactly their parent's prompt and thought). A child waits for its
    parent (``parent``) and is sent the moment it finishes. Thought lengths: the root's is
    the client's ``output_len`` draw, the others are drawn from the same distribution.
    A tree has ``sum(branching**d for d in 0..depth)`` requests.
    """

    branching: int
    depth: int
    instruction_len: int = 256
    step_len: int = 16

    def __post_init__(self) -> None:
        for name in ("branching", "depth", "instruction_len", "step_len"):
            v = getattr(self, name)
            lo = 0 if name == "depth" else 1
            if isinstance(v, bool) or int(v) != v or v < lo:
                raise ValueError(f"TreeOfThought: {name} must be an integer >= {lo}, got {v!r}")

    @property
    def tree_size(self) -> int:
        return sum(self.branching ** d for d in range(self.depth + 1))

    def build(self, draws, rng, streams, prompt_len: LengthDist, output_len: LengthDist):
        n = len(draws.arrival_times)
        instruction = UniqueTokens(streams.next(), int(self.instruction_len))
        extra = output_len.sample(rng, n * (self.tree_size - 1))
        out: list[DraftRequest] = []
        e = 0
        for i in range(n):
            start = float(draws.arrival_times[i])
            root_prompt = ConcatTokens([instruction, UniqueTokens(streams.next(), int(draws.prompt_lens[i]))])
            # (prompt, thought, index in out) of the nodes of the current level
            level: list[tuple[TokenSource, TokenSource, int]] = []
            thought = UniqueTokens(streams.next(), int(draws.output_lens[i]))
            out.append(DraftRequest(start, root_prompt, thought.length, output_tokens=thought))
            level.append((root_prompt, thought, len(out) - 1))
            for _ in range(self.depth):
                nxt = []
                for prompt, parent_thought, parent_index in level:
                    for _ in range(self.branching):
                        child_prompt = ConcatTokens([prompt, parent_thought,
                                                     UniqueTokens(streams.next(), int(self.step_len))])
                        child_thought = UniqueTokens(streams.next(), int(extra[e]))
                        e += 1
                        out.append(DraftRequest(start, child_prompt, child_thought.length,
                                                output_tokens=child_thought, parent=parent_index))
                        nxt.append((child_prompt, child_thought, len(out) - 1))
                level = nxt
        return out
