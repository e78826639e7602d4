"""Real request traces shipped with the project (``envs/data/``), and workloads that replay them.

Why: a scheduler tuned on synthetic arrivals can fail on real ones, whose bursts, length
mixes and prefix sharing no simple distribution reproduces. Three traces are shipped
(sources and licenses in ``envs/data/README.md``):

* Mooncake conversation (Kimi): arrival, lengths and one hash id per 512-token prompt
  block, so the prefix cache sees the real sharing (``HashBlockTokens``).
* Azure LLM inference 2023, conversation service: arrival and lengths, no sharing info.
* VTC's Chatbot Arena sample: arrival, lengths and one of 27 clients per request.

Loaders are strict: a malformed value raises ``TraceFormatError`` naming the file, the
1-based line and the field, never a guess. One rule is lenient and reported: a row with
0 prompt or 0 output tokens cannot be a request (``RequestSpec`` needs >= 1 of each), so
it is skipped, listed in the trace's ``TraceLoadReport`` and announced with a
``TraceRowsSkippedWarning``. (The shipped files have no such rows.)

Parsed traces are cached per process, keyed on the path and the file's modification
time and size.
"""

from __future__ import annotations

import csv
import datetime
import functools
import gzip
import io
import json
import math
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import numpy as np

from envs.request import RequestSpec
from envs.tokens import HashBlockTokens, TokenSource, UniqueTokens
from envs.workloads.programs import mix64, name_key

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
MOONCAKE_BLOCK_TOKENS = 512  # each Mooncake hash id stands for this many prompt tokens

MOONCAKE_CONVERSATION_PATH = DATA_DIR / "mooncake_conversation_trace.jsonl.gz"
AZURE_CONV_PATH = DATA_DIR / "azure_llm_2023_conv.csv.gz"
ARENA_27_PATH = DATA_DIR / "vtc_chatbot_arena_27clients.csv"


class TraceFormatError(ValueError):
    """A trace file does not have the format its loader expects; the message says where and why."""


class TraceRowsSkippedWarning(UserWarning):
    """Some trace rows could not be requests (zero tokens) and were left out; see the load report."""


@dataclass(frozen=True)
class SkippedRow:
    line: int      # 1-based line in the file
    field: str     # the column or key whose value made the row unusable
    reason: str


@dataclass(frozen=True)
class TraceLoadReport:
    """What a loader read from a file and what it left out."""

    path: str
    rows_read: int
    skipped: tuple[SkippedRow, ...] = ()

    @property
    def rows_loaded(self) -> int:
        return self.rows_read - len(self.skipped)

    @property
    def num_skipped(self) -> int:
        return len(self.skipped)


@dataclass(frozen=True)
class ParsedTrace:
    """One trace as columns. Arrival times are seconds from the trace's start, non-decreasing."""

    path: str
    arrival_s: np.ndarray
    client_ids: np.ndarray
    prompt_lens: np.ndarray
    output_lens: np.ndarray
    hash_ids: tuple[tuple[int, ...], ...] | None  # Mooncake only
    report: TraceLoadReport

    def __len__(self) -> int:
        return len(self.arrival_s)


def _error(path: str, line: int, field: str | None, message: str) -> TraceFormatError:
    where = f"{path}:{line}: " + (f"field {field!r}: " if field is not None else "")
    return TraceFormatError(where + message)


def _int_text(text: str, path: str, line: int, field: str) -> int:
    if text.isascii() and text.isdigit():
        return int(text)
    raise _error(path, line, field, f"expected a non-negative integer, got {text!r}")


def _finish(path: str, rows_read: int, skipped: list[SkippedRow], arrival: list[float],
            clients: list[int], prompts: list[int], outputs: list[int],
            hash_ids: list[tuple[int, ...]] | None) -> ParsedTrace:
    report = TraceLoadReport(path, rows_read, tuple(skipped))
    if skipped:
        first = skipped[0]
        warnings.warn(
            f"{path}: skipped {len(skipped)} of {rows_read} rows with zero tokens "
            f"(first at line {first.line}, field {first.field!r})", TraceRowsSkippedWarning, stacklevel=4)
    return ParsedTrace(path, np.asarray(arrival, dtype=np.float64), np.asarray(clients, dtype=np.int64),
                       np.asarray(prompts, dtype=np.int64), np.asarray(outputs, dtype=np.int64),
                       None if hash_ids is None else tuple(hash_ids), report)


def _zero_rows(line: int, prompt_field: str, prompt: int, output_field: str, output: int) -> SkippedRow | None:
    if prompt == 0:
        return SkippedRow(line, prompt_field, "prompt has 0 tokens")
    if output == 0:
        return SkippedRow(line, output_field, "output has 0 tokens")
    return None


def _open_text(path: str) -> io.TextIOBase:
    if path.endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8", newline="")
    return open(path, "r", encoding="utf-8", newline="")


def _csv_rows(path: str, required: tuple[str, ...]):
    """Yield (line number, values of the ``required`` columns in that order) for each data row."""
    with _open_text(path) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise _error(path, 1, None, "the file is empty; expected a header row")
        columns = {name: i for i, name in enumerate(header)}
        for name in required:
            if name not in columns:
                raise _error(path, 1, name, f"missing column; the header has {header}")
        picks = [columns[name] for name in required]
        for row in reader:
            if len(row) != len(header):
                field = header[len(row)] if len(row) < len(header) else None
                raise _error(path, reader.line_num, field,
                             f"the row has {len(row)} fields, the header has {len(header)}")
            yield reader.line_num, [row[i] for i in picks]


# --- Mooncake -----------------------------------------------------------------------

_MOONCAKE_KEYS = ("timestamp", "input_length", "output_length", "hash_ids")


def _json_int(record: dict, key: str, path: str, line: int) -> int:
    value = record[key]
    if type(value) is not int or value < 0:
        raise _error(path, line, key, f"expected a non-negative integer, got {value!r}")
    return value


@functools.lru_cache(maxsize=16)
def _load_mooncake(path: str, mtime_ns: int, size: int) -> ParsedTrace:
    arrival, prompts, outputs, hashes, skipped = [], [], [], [], []
    previous_ms = -math.inf
    line = 0
    with _open_text(path) as f:
        for line, text in enumerate(f, start=1):
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                raise _error(path, line, None, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(record, dict):
                raise _error(path, line, None, f"expected a JSON object, got {type(record).__name__}")
            for key in _MOONCAKE_KEYS:
                if key not in record:
                    raise _error(path, line, key, f"missing key; the record has {sorted(record)}")
            ms = record["timestamp"]
            if type(ms) not in (int, float) or not (math.isfinite(ms) and ms >= 0):
                raise _error(path, line, "timestamp", f"expected a non-negative number of milliseconds, got {ms!r}")
            if ms < previous_ms:
                raise _error(path, line, "timestamp", f"{ms} is earlier than the previous row's {previous_ms}; "
                             "the trace must be sorted by time")
            previous_ms = ms
            input_length = _json_int(record, "input_length", path, line)
            output_length = _json_int(record, "output_length", path, line)
            ids = record["hash_ids"]
            if type(ids) is not list or not all(type(h) is int and h >= 0 for h in ids):
                raise _error(path, line, "hash_ids", f"expected a list of non-negative integers, got {ids!r:.80}")
            skip = _zero_rows(line, "input_length", input_length, "output_length", output_length)
            if skip is not None:
                skipped.append(skip)
                continue
            capacity = len(ids) * MOONCAKE_BLOCK_TOKENS
            if not (capacity - MOONCAKE_BLOCK_TOKENS < input_length <= capacity):
                raise _error(path, line, "hash_ids",
                             f"{len(ids)} blocks of {MOONCAKE_BLOCK_TOKENS} tokens do not match "
                             f"input_length {input_length} (needs {math.ceil(input_length / MOONCAKE_BLOCK_TOKENS)})")
            arrival.append(ms / 1000.0)
            prompts.append(input_length)
            outputs.append(output_length)
            hashes.append(tuple(ids))
    return _finish(path, line, skipped, arrival, [0] * len(arrival), prompts, outputs, hashes)


# --- Azure LLM inference 2023 ---------------------------------------------------------

_AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
_AZURE_TIME = re.compile(r"(\d{4}-\d{2}-\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?")


def _azure_time_ns(text: str, days: dict[str, int], path: str, line: int) -> int:
    """Nanoseconds since 0001-01-01 for ``YYYY-MM-DD HH:MM:SS[.fffffff]``; exact, no float rounding."""
    match = _AZURE_TIME.fullmatch(text)
    if match is None:
        raise _error(path, line, "TIMESTAMP", f"expected 'YYYY-MM-DD HH:MM:SS.fffffff', got {text!r}")
    date, hh, mm, ss, frac = match.groups()
    day = days.get(date)
    if day is None:
        try:
            day = days[date] = datetime.date.fromisoformat(date).toordinal()
        except ValueError:
            raise _error(path, line, "TIMESTAMP", f"no such date in {text!r}") from None
    h, m, s = int(hh), int(mm), int(ss)
    if h > 23 or m > 59 or s > 59:
        raise _error(path, line, "TIMESTAMP", f"no such time of day in {text!r}")
    nanos = int(frac.ljust(9, "0")) if frac else 0
    return ((day * 24 + h) * 60 + m) * 60_000_000_000 + s * 1_000_000_000 + nanos


@functools.lru_cache(maxsize=16)
def _load_azure(path: str, mtime_ns: int, size: int) -> ParsedTrace:
    arrival, prompts, outputs, skipped = [], [], [], []
    days: dict[str, int] = {}
    first_ns = previous_ns = None
    rows_read = 0
    for line, (stamp, ctx_text, gen_text) in _csv_rows(path, _AZURE_COLUMNS):
        rows_read += 1
        ns = _azure_time_ns(stamp, days, path, line)
        if previous_ns is not None and ns < previous_ns:
            raise _error(path, line, "TIMESTAMP", f"{stamp!r} is earlier than the previous row's; "
                         "the trace must be sorted by time")
        if first_ns is None:
            first_ns = ns
        previous_ns = ns
        ctx = _int_text(ctx_text, path, line, "ContextTokens")
        gen = _int_text(gen_text, path, line, "GeneratedTokens")
        skip = _zero_rows(line, "ContextTokens", ctx, "GeneratedTokens", gen)
        if skip is not None:
            skipped.append(skip)
            continue
        arrival.append((ns - first_ns) / 1e9)
        prompts.append(ctx)
        outputs.append(gen)
    return _finish(path, rows_read, skipped, arrival, [0] * len(arrival), prompts, outputs, None)


# --- VTC Chatbot Arena, 27 clients ----------------------------------------------------

_ARENA_COLUMNS = ("req_id", "arrival_time_s", "client_id", "prompt_tokens", "output_tokens")


@functools.lru_cache(maxsize=16)
def _load_arena(path: str, mtime_ns: int, size: int) -> ParsedTrace:
    arrival, clients, prompts, outputs, skipped = [], [], [], [], []
    previous = -math.inf
    rows_read = 0
    for line, (req_id, text, client_text, prompt_text, output_text) in _csv_rows(path, _ARENA_COLUMNS):
        rows_read += 1
        _int_text(req_id, path, line, "req_id")
        try:
            t = float(text)
        except ValueError:
            t = math.nan
        if not (math.isfinite(t) and t >= 0.0) or "_" in text:
            raise _error(path, line, "arrival_time_s", f"expected a non-negative number of seconds, got {text!r}")
        if t < previous:
            raise _error(path, line, "arrival_time_s", f"{t} is earlier than the previous row's {previous}; "
                         "the trace must be sorted by time")
        previous = t
        client = _int_text(client_text, path, line, "client_id")
        prompt = _int_text(prompt_text, path, line, "prompt_tokens")
        output = _int_text(output_text, path, line, "output_tokens")
        skip = _zero_rows(line, "prompt_tokens", prompt, "output_tokens", output)
        if skip is not None:
            skipped.append(skip)
            continue
        arrival.append(t)
        clients.append(client)
        prompts.append(prompt)
        outputs.append(output)
    return _finish(path, rows_read, skipped, arrival, clients, prompts, outputs, None)


def _cache_key(path: str | Path) -> tuple[str, int, int]:
    """(resolved path, mtime, size): a file edited in place is parsed again."""
    resolved = Path(path).resolve()
    try:
        stat = resolved.stat()
    except OSError as exc:
        raise FileNotFoundError(f"trace file {resolved} cannot be read: {exc.strerror}") from None
    return str(resolved), stat.st_mtime_ns, stat.st_size


def load_mooncake_trace(path: str | Path = MOONCAKE_CONVERSATION_PATH) -> ParsedTrace:
    """Parse a Mooncake JSON-lines trace (cached). Raises TraceFormatError on malformed input."""
    return _load_mooncake(*_cache_key(path))


def load_azure_trace(path: str | Path = AZURE_CONV_PATH) -> ParsedTrace:
    """Parse an Azure LLM inference 2023 CSV trace (cached). Raises TraceFormatError on malformed input."""
    return _load_azure(*_cache_key(path))


def load_arena_trace(path: str | Path = ARENA_27_PATH) -> ParsedTrace:
    """Parse VTC's Chatbot Arena client trace CSV (cached). Raises TraceFormatError on malformed input."""
    return _load_arena(*_cache_key(path))


_LOADERS: dict[str, Callable[[str | Path], ParsedTrace]] = {
    "mooncake": load_mooncake_trace,
    "azure": load_azure_trace,
    "arena": load_arena_trace,
}


@dataclass(frozen=True)
class TraceWorkload:
    """A named workload that replays a trace file, row by row, in its own order.

    A trace is data, not a random process: ``seed`` is accepted for the common workload
    interface and ignored, so every seed gives the same requests. Prompts without sharing
    information get content that no other request shares (one token stream per trace row,
    the same in every slice).
    """

    kind: ClassVar[str] = "trace"

    name: str
    description: str
    path: Path
    format: str  # one of "mooncake", "azure", "arena"

    def __post_init__(self) -> None:
        if self.format not in _LOADERS:
            raise ValueError(f"trace workload {self.name!r}: unknown format {self.format!r}; "
                             f"known: {sorted(_LOADERS)}")

    def trace(self) -> ParsedTrace:
        return _LOADERS[self.format](self.path)

    @property
    def num_requests(self) -> int:
        return len(self.trace())

    @property
    def load_report(self) -> TraceLoadReport:
        return self.trace().report

    def generate(self, seed: int = 0, num_requests: int | None = None, start_index: int = 0) -> list[RequestSpec]:
        """Rows ``start_index .. start_index + num_requests`` (to the end when None), first arrival at 0.0."""
        total = self.num_requests
        count = total - start_index if num_requests is None else num_requests
        return self.generate_slice(start_index, count)

    def generate_slice(self, start: int, count: int) -> list[RequestSpec]:
        """``count`` consecutive rows from row ``start`` (0-based), as requests with ids 0..count-1."""
        trace = self.trace()
        if not (0 <= start <= len(trace)) or count < 0 or start + count > len(trace):
            raise ValueError(f"trace workload {self.name!r}: rows [{start}, {start + count}) are outside "
                             f"the trace's {len(trace)} rows")
        if count == 0:
            return []
        t0 = float(trace.arrival_s[start])
        key = name_key(self.name)
        specs = []
        for rid, row in enumerate(range(start, start + count)):
            specs.append(RequestSpec(
                request_id=rid, client_id=int(trace.client_ids[row]),
                arrival_time=float(trace.arrival_s[row]) - t0, prompt=self._prompt(trace, row, key),
                output_len=int(trace.output_lens[row])))
        return specs

    def _prompt(self, trace: ParsedTrace, row: int, key: int) -> TokenSource:
        length = int(trace.prompt_lens[row])
        if trace.hash_ids is not None:
            return HashBlockTokens(trace.hash_ids[row], length, MOONCAKE_BLOCK_TOKENS)
        return UniqueTokens(mix64(key ^ mix64(row + 1)), length)
