"""Test Kendall's tau of the output-length ranker per backbone x loss x target model, vs simple predictors.

For each target model the script fits the simple predictors (prompt length, bag-of-words
ridge) and scores the untrained backbone, then fine-tunes one ranker per backbone and
loss with ``agents.ranker_training.train_ranker`` (the same code as ``servegym train
ranker``) on the same split, and prints one table of test tau (161 test prompts; the
standard error of one tau is about 0.05). Each backbone is loaded once and copied for
every run, with the head re-initialised from the seed.

    python benchmarks/ranker_tau.py [--backbones minilm-l6,smollm2-135m] [--losses listmle,pairwise,pointwise]
        [--models Meta-Llama-3-8B-Instruct,gpt-3.5-turbo-0613,alpaca-7b] [--epochs 12] [--device cpu]
        [--json FILE] [--markdown]
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from print_table import print_table  # noqa: E402  (beside this script)

DEFAULT_MODELS = "Meta-Llama-3-8B-Instruct,gpt-3.5-turbo-0613,alpaca-7b"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="minilm-l6")
    p.add_argument("--losses", default="listmle,pairwise,pointwise")
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--epochs", type=int, default=None, help="default: RankerTrainConfig's")
    p.add_argument("--list-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="backbone learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown rows")
    args = p.parse_args(argv)

    import torch

    from agents.ranker import Ranker
    from agents.ranker_baselines import BagOfWordsRidge, PromptLengthPredictor
    from agents.ranker_data import load_ranker_data
    from agents.ranker_training import RankerTrainConfig, train_ranker
    from agents.ranking_metrics import length_tau

    backbones = [b for b in args.backbones.split(",") if b]
    losses = [x for x in args.losses.split(",") if x]
    models = [m for m in args.models.split(",") if m]
    base_config = RankerTrainConfig(seed=args.seed, split_seed=args.split_seed)
    for name in ("epochs", "list_size", "lr"):
        if getattr(args, name) is not None:
            base_config = dataclasses.replace(base_config, **{name: getattr(args, name)})
    rows: list[dict] = []
    for model in models:
        data = load_ranker_data(model, args.split_seed)
        plen = PromptLengthPredictor().fit(data.train.prompt_tokens, data.train.lengths)
        bow = BagOfWordsRidge().fit(data.train.prompts, data.train.lengths, data.val.prompts, data.val.lengths)
        rows.append({"model": model, "predictor": "prompt-length", "loss": "-",
                     "test_tau": length_tau(plen.score(data.test.prompt_tokens), data.test.lengths)})
        rows.append({"model": model, "predictor": "bag-of-words", "loss": "-",
                     "test_tau": length_tau(bow.score(data.test.prompts), data.test.lengths)})
        print(f"{model}: prompt-length {rows[-2]['test_tau']:.3f}, bag-of-words {rows[-1]['test_tau']:.3f}",
              file=sys.stderr, flush=True)
    for backbone in backbones:
        base = Ranker.from_backbone(backbone, seed=args.seed)
        for model in models:
            data = load_ranker_data(model, args.split_seed)
            for loss in losses:
                config = dataclasses.replace(base_config, backbone=backbone, target_model=model, loss=loss)
                ranker = Ranker(base.tokenizer, copy.deepcopy(base.module), base.meta).to(args.device)
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(args.seed)
                    ranker.module.head.reset_parameters()
                t0 = time.perf_counter()
                result = train_ranker(config, data, ranker)
                row = {"model": model, "predictor": backbone, "loss": loss, "test_tau": result.test_tau,
                       "val_tau": result.val_tau, "untrained_test_tau": result.untrained_test_tau,
                       "best_epoch": result.best_epoch, "epochs": config.epochs,
                       "seconds": time.perf_counter() - t0}
                rows.append(row)
                print(f"{model} {backbone} {loss}: test tau {result.test_tau:.3f} (val {result.val_tau:.3f}, "
                      f"untrained {result.untrained_test_tau:.3f}, best epoch {result.best_epoch}) "
                      f"in {row['seconds']:.0f} s", file=sys.stderr, flush=True)
            del data
        del base

    device = args.device
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(0)})"
    header = ("target model", "predictor", "loss", "test tau", "untrained", "best epoch", "train s")
    table = []
    for r in rows:
        table.append((r["model"], r["predictor"], r["loss"], f"{r['test_tau']:.3f}",
                      f"{r['untrained_test_tau']:.3f}" if "untrained_test_tau" in r else "-",
                      f"{r['best_epoch']}/{r['epochs']}" if "best_epoch" in r else "-",
                      f"{r['seconds']:.0f}" if "seconds" in r else "-"))
    print(f"device {device}, torch {torch.__version__}, {os.cpu_count()} CPUs, {platform.python_version()}; "
          f"split seed {args.split_seed} (564 train / 80 val / 161 test prompts), seed {args.seed}; "
          f"lists of {base_config.list_size}, lr {base_config.lr:g} (head {base_config.head_lr:g}), "
          f"{base_config.epochs} epochs, best validation epoch kept")
    print_table(header, table, args.markdown)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
