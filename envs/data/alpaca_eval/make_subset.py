"""Rebuild ``alpaca_eval_lengths.jsonl.gz`` from the full AlpacaEval extracts (not used at run time).

Usage::

    python envs/data/alpaca_eval/make_subset.py SOURCE_DIR [OUT_FILE]

``SOURCE_DIR`` holds ``alpaca_eval_prompts.jsonl.gz`` and
``alpaca_eval_output_lengths_all_models.csv.gz`` (see this folder's README for where
they come from). The output has one JSON object per prompt, sorted by ``instruction_id``,
with the response length of each model in ``MODELS``; gzip with mtime 0, so the same
inputs give the same bytes.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import sys
from pathlib import Path

MODELS = (  # the six target models first, from verbose to terse (mean response length)
    "gpt4_1106_preview",
    "Meta-Llama-3-70B-Instruct",
    "Meta-Llama-3-8B-Instruct",
    "gpt-3.5-turbo-0613",
    "vicuna-13b-v1.5",
    "alpaca-7b",
    # Auxiliary models: every other model whose full responses the project's extract keeps
    # (``alpaca_eval_outputs_24models.jsonl.gz``), chosen by availability, not by how well
    # they agree with any target. Left out: gpt35_turbo_instruct and llama-2-70b-chat-hf
    # (upstream lacks some of their responses), text_davinci_003 and gemini-pro (some of
    # their responses are empty, and every length here is >= 1). Their lengths are extra
    # ranking labels for the ranker (``servegym train ranker --aux-models``); no workload
    # serves them.
    "gpt4",
    "gpt-4o-2024-05-13",
    "claude-2",
    "claude-3-opus-20240229",
    "claude-instant-1.2",
    "llama-2-7b-chat-hf",
    "Mixtral-8x7B-Instruct-v0.1",
    "Mistral-7B-Instruct-v0.2",
    "Qwen1.5-72B-Chat",
    "Yi-34B-Chat",
    "zephyr-7b-beta",
    "tulu-2-dpo-70b",
    "guanaco-33b",
    "oasst-sft-pythia-12b",
)


def main(argv: list[str]) -> int:
    if len(argv) not in (1, 2):
        print(__doc__, file=sys.stderr)
        return 2
    src = Path(argv[0])
    out = Path(argv[1]) if len(argv) == 2 else Path(__file__).resolve().parent / "alpaca_eval_lengths.jsonl.gz"
    with gzip.open(src / "alpaca_eval_prompts.jsonl.gz", "rt", encoding="utf-8") as f:
        prompts = {p["instruction_id"]: p for p in map(json.loads, f)}
    lengths: dict[int, dict[str, int]] = {i: {} for i in prompts}
    with gzip.open(src / "alpaca_eval_output_lengths_all_models.csv.gz", "rt", encoding="utf-8", newline="") as f:
        for row in csv.DictReader(f):
            if row["model_dir"] in MODELS:
                lengths[int(row["instruction_id"])][row["model_dir"]] = int(row["output_tokens_cl100k"])
    buf = io.StringIO()
    for i in sorted(prompts):
        missing = [m for m in MODELS if m not in lengths[i]]
        if missing:
            raise SystemExit(f"instruction {i}: no length for {missing}")
        p = prompts[i]
        record = {"instruction_id": i, "dataset": p["dataset"], "instruction": p["instruction"],
                  "instruction_tokens_cl100k": p["instruction_tokens_cl100k"],
                  "output_tokens_cl100k": {m: lengths[i][m] for m in MODELS}}
        buf.write(json.dumps(record, ensure_ascii=False) + "\n")
    with open(out, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
        gz.write(buf.getvalue().encode("utf-8"))
    print(f"wrote {len(prompts)} prompts x {len(MODELS)} models to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
