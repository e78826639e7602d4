"""Test Kendall's tau of the output-length ranker per label source x target model x split seed, vs simple predictors.

For each target model and split seed the script fits the simple predictors (prompt
length, bag-of-words ridge), then fine-tunes one ranker per backbone, loss and label
source with ``agents.ranker_training.train_ranker`` (the same code as ``servegym train
ranker``) on the same split, and prints one table of test tau per split seed with the
mean over seeds (161 test prompts per split; the standard error of one tau is about
0.05, so differences under about 0.05 / sqrt(seeds) are noise). Validation tau (80
prompts, the number that picks the epoch) is printed beside it. Each backbone is loaded
once and copied for every run, with the head re-initialised from the seed.

Recipes (``--recipes``): ``paper`` is the LTR paper's recipe as run before issue #5
(the target model's own lengths, lr 2e-5, 16 epochs; ``agents.ranker_config.PAPER_RECIPE``);
``default`` is ``RankerTrainConfig()``'s defaults (consensus labels over the auxiliary
models' lengths of the training prompts); ``target``, ``consensus`` and ``multi`` are
the defaults with that label source. ``--epochs``, ``--lr``, ``--pooling``,
``--prompt-format`` etc. override every recipe. Evaluation is always against the target
model's lengths. ``--json`` also holds each run's validation and test scores (in the
split's prompt order), which ``benchmarks/ranker_ensemble.py`` combines. ``--tf32`` lets
CUDA matrix products use TF32 (faster on a GPU; rounding differs from fp32).

    python benchmarks/ranker_tau.py [--backbones minilm-l6] [--losses listmle] [--recipes paper,default]
        [--models Meta-Llama-3-8B-Instruct,gpt4_1106_preview,alpaca-7b] [--split-seeds 0,1,2,3]
        [--epochs N] [--freeze-layers N] [--train-on-val] [--pooling mean|last] [--prompt-format raw|chat] [--device cpu]
        [--tf32] [--threads N] [--json FILE] [--markdown]
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from print_table import print_table  # noqa: E402  (beside this script)

DEFAULT_MODELS = "Meta-Llama-3-8B-Instruct,gpt4_1106_preview,alpaca-7b"
RECIPES = ("paper", "default", "target", "consensus", "multi")


def recipe_overrides(name: str) -> dict:
    """The config fields a recipe sets on top of ``RankerTrainConfig()``'s defaults."""
    from agents.ranker_config import PAPER_RECIPE

    if name == "paper":
        return dict(PAPER_RECIPE)
    if name == "default":
        return {}
    if name in ("target", "consensus", "multi"):
        return {"label_source": name}
    raise SystemExit(f"ranker_tau.py: unknown recipe {name!r}; available: {', '.join(RECIPES)}")


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--backbones", default="minilm-l6")
    p.add_argument("--losses", default="listmle")
    p.add_argument("--recipes", default="paper,default", help="comma-separated: " + ", ".join(RECIPES))
    p.add_argument("--models", default=DEFAULT_MODELS)
    p.add_argument("--split-seeds", type=_ints, default=[0, 1, 2, 3])
    p.add_argument("--epochs", type=int, default=None, help="default: RankerTrainConfig's")
    p.add_argument("--list-size", type=int, default=None)
    p.add_argument("--lr", type=float, default=None, help="backbone learning rate")
    p.add_argument("--head-lr", type=float, default=None, help="learning rate of the linear head")
    p.add_argument("--pooling", choices=("mean", "last"), default=None, help="default: the backbone's")
    p.add_argument("--prompt-format", choices=("raw", "chat"), default=None, help="default: RankerTrainConfig's")
    p.add_argument("--aux-models", default=None, help="default: RankerTrainConfig's")
    p.add_argument("--target-weight", type=float, default=None)
    p.add_argument("--freeze-layers", type=int, default=None)
    p.add_argument("--train-on-val", action="store_true", default=None,
                   help="refit on training + validation prompts for exactly --epochs epochs, last epoch kept "
                        "(validation tau then in-sample)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--tf32", action="store_true", help="allow TF32 matrix products on CUDA")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown rows")
    args = p.parse_args(argv)

    import torch

    from agents.ranker import Ranker
    from agents.ranker_baselines import BagOfWordsRidge, PromptLengthPredictor
    from agents.ranker_data import load_ranker_data
    from agents.ranker_training import RankerTrainConfig, aux_models_for, train_ranker
    from agents.ranking_metrics import length_tau

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.tf32:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    backbones = [b for b in args.backbones.split(",") if b]
    losses = [x for x in args.losses.split(",") if x]
    recipes = [x for x in args.recipes.split(",") if x]
    for r in recipes:
        recipe_overrides(r)  # an unknown name fails before any work
    models = [m for m in args.models.split(",") if m]
    base_config = RankerTrainConfig(seed=args.seed)
    overrides = {name: getattr(args, name) for name in ("epochs", "list_size", "lr", "head_lr", "aux_models",
                                                        "target_weight", "freeze_layers", "pooling", "prompt_format",
                                                        "train_on_val")
                 if getattr(args, name) is not None}
    rows: list[dict] = []
    for model in models:
        for split_seed in args.split_seeds:
            data = load_ranker_data(model, split_seed)
            plen = PromptLengthPredictor().fit(data.train.prompt_tokens, data.train.lengths)
            bow = BagOfWordsRidge().fit(data.train.prompts, data.train.lengths, data.val.prompts, data.val.lengths)
            rows.append({"model": model, "predictor": "prompt-length", "split_seed": split_seed,
                         "val_tau": length_tau(plen.score(data.val.prompt_tokens), data.val.lengths),
                         "test_tau": length_tau(plen.score(data.test.prompt_tokens), data.test.lengths)})
            rows.append({"model": model, "predictor": "bag-of-words", "split_seed": split_seed,
                         "val_tau": bow.val_taus[bow.lam],
                         "test_tau": length_tau(bow.score(data.test.prompts), data.test.lengths)})
    for backbone in backbones:
        base = Ranker.from_backbone(backbone, seed=args.seed)
        for model in models:
            for split_seed in args.split_seeds:
                for loss in losses:
                    for recipe in recipes:
                        config = dataclasses.replace(base_config, backbone=backbone, target_model=model, loss=loss,
                                                     split_seed=split_seed, **{**recipe_overrides(recipe), **overrides})
                        data = load_ranker_data(model, split_seed, aux_models=aux_models_for(config))
                        ranker = Ranker(base.tokenizer, copy.deepcopy(base.module), base.meta).to(args.device)
                        with torch.random.fork_rng(devices=[]):
                            torch.manual_seed(args.seed)
                            ranker.module.head.reset_parameters()
                        t0 = time.perf_counter()
                        result = train_ranker(config, data, ranker)
                        name = f"{backbone} {loss} {recipe}"
                        rows.append({"model": model, "predictor": name, "split_seed": split_seed,
                                     "test_tau": result.test_tau, "val_tau": result.val_tau,
                                     "config": dataclasses.asdict(config),
                                     "best_epoch": result.best_epoch, "epochs": config.epochs,
                                     "num_aux": len(data.aux_models), "seconds": time.perf_counter() - t0,
                                     "val_scores": result.val_scores.tolist(),
                                     "test_scores": result.test_scores.tolist()})
                        print(f"{model} split {split_seed} {name}: test tau {result.test_tau:.3f} "
                              f"(val {result.val_tau:.3f}, best epoch {result.best_epoch}) "
                              f"in {rows[-1]['seconds']:.0f} s", file=sys.stderr, flush=True)
        del base

    device = args.device
    if device.startswith("cuda"):
        device += f" ({torch.cuda.get_device_name(0)})"
    seeds = args.split_seeds
    header = ("target model", "predictor", *[f"test s{s}" for s in seeds], "test mean", "val mean", "train s")
    table = []
    for model in models:
        names = list(dict.fromkeys(r["predictor"] for r in rows if r["model"] == model))
        for name in names:
            got = {r["split_seed"]: r for r in rows if r["model"] == model and r["predictor"] == name}
            secs = [r["seconds"] for r in got.values() if "seconds" in r]
            table.append((model, name, *[f"{got[s]['test_tau']:.3f}" for s in seeds],
                          f"{np.mean([got[s]['test_tau'] for s in seeds]):.3f}",
                          f"{np.mean([got[s]['val_tau'] for s in seeds]):.3f}",
                          f"{np.mean(secs):.0f}" if secs else "-"))
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads of {os.cpu_count()} CPUs, "
          f"Python {platform.python_version()}; split seeds {','.join(map(str, seeds))} (564 train / 80 val / "
          f"161 test prompts), seed {args.seed}; "
          + ("validation prompts in training, last epoch kept, val tau in-sample" if args.train_on_val
             else "best validation epoch kept")
          + "; Kendall's tau-b against the "
          f"target model's lengths")
    for recipe in recipes:
        c = dataclasses.replace(base_config, **{**recipe_overrides(recipe), **overrides})
        print(f"  {recipe}: labels {c.label_source}"
              + (f" (aux {c.aux_models}, target weight {c.target_weight:g})" if c.uses_aux() else "")
              + f", lists of {c.list_size}, lr {c.lr:g} (head {c.head_lr:g}), {c.epochs} epochs, "
              f"frozen layers {c.freeze_layers}, select on {c.select_on}, pooling {c.pooling or 'backbone'}"
              f", prompt format {c.prompt_format}" + (", TF32" if args.tf32 else ""))
    print_table(header, table, args.markdown)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"device": device, "recipes": recipes, "tf32": args.tf32,
                                         "command": "python benchmarks/ranker_tau.py " + " ".join(argv or sys.argv[1:]),
                                         "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
