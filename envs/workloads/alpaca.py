"""Real prompts with real response lengths: AlpacaEval's 805 instructions and what twenty models answered.

Why: an output-length predictor (the learning-to-rank scheduler of Fu et al., NeurIPS'24,
``../shared/papers.md`` §4) reads the prompt *text*, so a workload that is to be served
with it must carry prompt text and the true length of one target model's response to
that very prompt. The shipped file ``envs/data/alpaca_eval/alpaca_eval_lengths.jsonl.gz``
(CC BY-NC 4.0; see the README beside it) holds the 805 AlpacaEval instructions and the
cl100k token counts of the responses of six target models of different verbosity
(``SHIPPED_MODELS``, each served as a workload) and of fourteen auxiliary models
(``AUX_MODELS``, extra ranking labels for the ranker only).

The same module splits the prompts into train / validation / test sets by prompt
(``split_prompt_ids``), so the ranker trained in ``agents`` and the workload that
evaluates it in the simulator agree on which prompts the predictor never saw.

The loader is strict: a malformed record raises ``AlpacaFormatError`` naming the file,
the 1-based line and the key.
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Sequence

import numpy as np

from envs.request import RequestSpec
from envs.tokens import UniqueTokens
from envs.workloads.arrivals import Poisson
from envs.workloads.programs import mix64, name_key
from envs.workloads.synthetic import check_count, check_seed

ALPACA_DIR = Path(__file__).resolve().parent.parent / "data" / "alpaca_eval"
ALPACA_LENGTHS_PATH = ALPACA_DIR / "alpaca_eval_lengths.jsonl.gz"

SPLITS = ("train", "val", "test")
DEFAULT_SPLIT_FRACTIONS = (0.7, 0.1, 0.2)  # train / val / test, by prompt
# The target models whose lengths the shipped file holds, from verbose to terse (mean
# response 432, 416, 412, 271, 230 and 85 cl100k tokens).
SHIPPED_MODELS = ("gpt4_1106_preview", "Meta-Llama-3-70B-Instruct", "Meta-Llama-3-8B-Instruct",
                  "gpt-3.5-turbo-0613", "vicuna-13b-v1.5", "alpaca-7b")
# Fourteen more models whose lengths the file also holds, after the six: auxiliary ranking
# labels for the ranker (``agents.ranker_data``, ``--aux-models``). No workload serves them.
AUX_MODELS = ("gpt4", "gpt-4o-2024-05-13", "claude-2", "claude-3-opus-20240229",
              "claude-instant-1.2", "llama-2-7b-chat-hf", "Mixtral-8x7B-Instruct-v0.1",
              "Mistral-7B-Instruct-v0.2", "Qwen1.5-72B-Chat", "Yi-34B-Chat", "zephyr-7b-beta",
              "tulu-2-dpo-70b", "guanaco-33b", "oasst-sft-pythia-12b")


class AlpacaFormatError(ValueError):
    """The AlpacaEval lengths file does not have the expected format; the message says where."""


class UnknownTargetModelError(KeyError):
    """No response lengths for the asked model; the message lists the models that have them."""

    def __str__(self) -> str:
        return str(self.args[0])


@dataclass(frozen=True)
class AlpacaEvalData:
    """The prompts, in file order, and each model's response length (cl100k tokens) per prompt."""

    path: str
    instruction_ids: np.ndarray           # int64, unique
    datasets: tuple[str, ...]             # AlpacaEval source set per prompt (koala, oasst, ...)
    prompts: tuple[str, ...]              # the instruction text
    prompt_tokens: np.ndarray             # int64, cl100k tokens of the instruction, >= 1
    output_tokens: dict[str, np.ndarray]  # model -> int64 lengths aligned with prompts, >= 1

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.output_tokens)

    def lengths(self, model: str) -> np.ndarray:
        """``model``'s response lengths, aligned with ``prompts``."""
        try:
            return self.output_tokens[model]
        except KeyError:
            raise UnknownTargetModelError(
                f"no response lengths for target model {model!r} in {self.path}; "
                f"available: {', '.join(self.models)}") from None


def _error(path: str, line: int, key: str | None, message: str) -> AlpacaFormatError:
    return AlpacaFormatError(f"{path}:{line}: " + (f"key {key!r}: " if key else "") + message)


def _positive_int(value: object, path: str, line: int, key: str) -> int:
    if type(value) is not int or value < 1:
        raise _error(path, line, key, f"expected an integer >= 1, got {value!r}")
    return value


@functools.lru_cache(maxsize=4)
def _load(path: str, mtime_ns: int, size: int) -> AlpacaEvalData:
    ids, datasets, prompts, prompt_tokens = [], [], [], []
    outputs: dict[str, list[int]] | None = None
    seen: set[int] = set()
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line, text in enumerate(f, start=1):
            try:
                rec = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _error(path, line, None, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(rec, dict):
                raise _error(path, line, None, f"expected a JSON object, got {type(rec).__name__}")
            for key in ("instruction_id", "dataset", "instruction", "instruction_tokens_cl100k",
                        "output_tokens_cl100k"):
                if key not in rec:
                    raise _error(path, line, key, f"missing; the record has {sorted(rec)}")
            iid = rec["instruction_id"]
            if type(iid) is not int or iid < 0:
                raise _error(path, line, "instruction_id", f"expected an integer >= 0, got {iid!r}")
            if iid in seen:
                raise _error(path, line, "instruction_id", f"{iid} appears twice")
            seen.add(iid)
            if not isinstance(rec["instruction"], str) or not rec["instruction"].strip():
                raise _error(path, line, "instruction", "expected a non-empty string")
            if not isinstance(rec["dataset"], str):
                raise _error(path, line, "dataset", f"expected a string, got {rec['dataset']!r}")
            lens = rec["output_tokens_cl100k"]
            if not isinstance(lens, dict) or not lens:
                raise _error(path, line, "output_tokens_cl100k", "expected a non-empty object model -> length")
            if outputs is None:
                outputs = {m: [] for m in lens}
            if set(lens) != set(outputs):
                raise _error(path, line, "output_tokens_cl100k",
                             f"models {sorted(lens)} differ from the first record's {sorted(outputs)}")
            for m in outputs:
                outputs[m].append(_positive_int(lens[m], path, line, f"output_tokens_cl100k.{m}"))
            ids.append(iid)
            datasets.append(rec["dataset"])
            prompts.append(rec["instruction"])
            prompt_tokens.append(_positive_int(rec["instruction_tokens_cl100k"], path, line,
                                               "instruction_tokens_cl100k"))
    if outputs is None:
        raise _error(path, 1, None, "the file holds no records")
    return AlpacaEvalData(path, np.asarray(ids, dtype=np.int64), tuple(datasets), tuple(prompts),
                          np.asarray(prompt_tokens, dtype=np.int64),
                          {m: np.asarray(v, dtype=np.int64) for m, v in outputs.items()})


def load_alpaca_eval(path: str | Path = ALPACA_LENGTHS_PATH) -> AlpacaEvalData:
    """Parse the AlpacaEval prompts-and-lengths file (cached per path, mtime and size)."""
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise FileNotFoundError(f"AlpacaEval lengths file {resolved} cannot be read: {exc.strerror}") from None
    return _load(str(resolved), stat.st_mtime_ns, stat.st_size)


def split_prompt_ids(instruction_ids: Sequence[int] | np.ndarray, seed: int = 0,
                     fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS) -> dict[str, np.ndarray]:
    """Split prompts into ``train`` / ``val`` / ``test`` by a seeded shuffle of their ids.

    Every id lands in exactly one split (sizes ``round(f * n)`` for train and val, the
    rest for test); each split is returned sorted. The result depends only on the set of
    ids, the seed and the fractions, not on the ids' order.
    """
    seed = check_seed(seed)
    ids = np.unique(np.asarray(instruction_ids, dtype=np.int64))
    if len(ids) != len(instruction_ids):
        raise ValueError(f"split_prompt_ids: instruction ids must be unique, got {len(instruction_ids)} "
                         f"ids of which {len(ids)} distinct")
    if len(fractions) != 3 or any(not (0.0 <= f <= 1.0) for f in fractions) or abs(sum(fractions) - 1.0) > 1e-9:
        raise ValueError(f"split_prompt_ids: fractions must be three numbers in [0, 1] summing to 1, got {fractions}")
    perm = np.random.default_rng(seed).permutation(ids)
    n_train = int(round(fractions[0] * len(ids)))
    n_val = int(round(fractions[1] * len(ids)))
    if n_train + n_val > len(ids):
        n_val = len(ids) - n_train
    return {"train": np.sort(perm[:n_train]), "val": np.sort(perm[n_train:n_train + n_val]),
            "test": np.sort(perm[n_train + n_val:])}


def workload_name(model: str, split: str | None = None) -> str:
    """The registered name of the workload for ``model`` (``alpaca-eval-<model>[-<split>]``, lower case)."""
    base = "alpaca-eval-" + model.lower().replace("_", "-")
    return base if split is None else f"{base}-{split}"


@dataclass(frozen=True)
class AlpacaEvalWorkload:
    """AlpacaEval prompts sent to one target model, with that model's real response lengths.

    ``generate(seed, n)`` shuffles the prompts of ``split`` (all 805 when None) with
    ``seed`` and sends them as one client's Poisson arrivals at ``rate`` req/s (the LTR
    paper's chatbot setting is Gamma with cv 1, i.e. Poisson). Each request carries its
    prompt text (for a predictor) and the target model's true output length. Prompt and
    output lengths are cl100k token counts, as measured on the upstream responses.
    Asking for more requests than the split has prompts walks further seeded
    permutations, so prompts then repeat; a repeated prompt has the same token content
    (one token stream per instruction), as a real repeated prompt would.
    """

    kind: ClassVar[str] = "trace"

    name: str
    description: str
    target_model: str
    split: str | None = None
    split_seed: int = 0
    rate: float = 8.0
    path: Path = ALPACA_LENGTHS_PATH

    def __post_init__(self) -> None:
        if self.split is not None and self.split not in SPLITS:
            raise ValueError(f"workload {self.name!r}: split must be one of {SPLITS} or None, got {self.split!r}")
        Poisson(self.rate)  # validates the rate

    def data(self) -> AlpacaEvalData:
        return load_alpaca_eval(self.path)

    def rows(self) -> np.ndarray:
        """Row indices (into ``data()``) of this workload's prompts, in file order."""
        data = self.data()
        if self.split is None:
            return np.arange(len(data))
        keep = split_prompt_ids(data.instruction_ids, self.split_seed)[self.split]
        return np.flatnonzero(np.isin(data.instruction_ids, keep))

    @property
    def num_requests(self) -> int:
        return len(self.rows())

    def generate_slice(self, start: int, count: int) -> list[RequestSpec]:
        """Requests ``start .. start + count`` of the seed-0 sequence, as ids 0..count-1, first arrival at 0.0.

        The trace-workload interface (the env draws random slices of a trace).
        """
        start, count = check_count("start", start), check_count("count", count)
        if start + count > self.num_requests:
            raise ValueError(f"workload {self.name!r}: requests [{start}, {start + count}) are outside its "
                             f"{self.num_requests} requests")
        specs = self.generate(0, start + count)[start:]
        t0 = specs[0].arrival_time if specs else 0.0
        return [dataclasses.replace(s, request_id=i, arrival_time=s.arrival_time - t0) for i, s in enumerate(specs)]

    def generate(self, seed: int = 0, num_requests: int | None = None) -> list[RequestSpec]:
        seed = check_seed(seed)
        count = check_count("num_requests", num_requests)
        data = self.data()
        lengths = data.lengths(self.target_model)
        rows = self.rows()
        count = len(rows) if count is None else count
        rng = np.random.default_rng([seed, name_key(self.name) & 0xFFFFFFFF])
        order: list[int] = []
        while len(order) < count:
            order.extend(rng.permutation(rows).tolist())
        order = order[:count]
        times = Poisson(self.rate).times(rng, None, count)
        key = name_key("alpaca-eval")
        return [RequestSpec(
            request_id=rid, client_id=0, arrival_time=float(times[rid]),
            prompt=UniqueTokens(mix64(key ^ mix64(int(data.instruction_ids[row]) + 1)),
                                int(data.prompt_tokens[row])),
            output_len=int(lengths[row]), prompt_text=data.prompts[row])
            for rid, row in enumerate(order)]


def alpaca_workloads(models: Sequence[str] | None = None) -> list[AlpacaEvalWorkload]:
    """One workload over all prompts and one over the test split, for each shipped target model."""
    if models is None:
        models = SHIPPED_MODELS
    out = []
    for m in models:
        out.append(AlpacaEvalWorkload(
            workload_name(m), f"AlpacaEval's 805 prompts (text) with {m}'s real response lengths, "
            "Poisson 8 req/s", m))
        out.append(AlpacaEvalWorkload(
            workload_name(m, "test"), f"the test split (seed 0, 20%) of AlpacaEval prompts with {m}'s "
            "response lengths: prompts a ranker trained by `servegym train ranker` never saw", m, split="test"))
    return out
