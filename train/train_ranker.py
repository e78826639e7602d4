"""``servegym train ranker`` and ``servegym ranker score``: train, compare and apply a length ranker.

``train ranker`` fine-tunes an output-length ranker (``agents.ranker``; the LTR paper,
Fu et al., NeurIPS'24) for one target model on the shipped AlpacaEval prompts, with a
tqdm bar and TensorBoard logs (``train/loss``, ``val/kendall_tau``), saves the best
checkpoint, and prints test Kendall's tau beside the simple predictors (prompt length,
bag-of-words ridge) and the untrained model on the same test prompts.

By default the training labels are a consensus of the target model's and the 19 other
shipped models' standardised log lengths of the *training* prompts (``--label-source
consensus --target-weight 0.8``): one sampled response per prompt is a noisy label, and
other models' lengths carry the same prompt-intrinsic signal. ``--label-source target``
(with ``--lr 2e-5 --epochs 16``) is the LTR paper's recipe. Validation and test tau are
always against the target model's lengths; no test prompt's auxiliary length is loaded.
The run folder ``--out`` holds::

    checkpoint/     the ranker (weights stay out of git: *.safetensors is ignored)
    tb/             TensorBoard events
    config.json     the resolved configuration and the command line
    results.json    what --json writes

``ranker score`` scores any prompts: one JSON object with a ``prompt`` string per input
line; each output line is that object with ``score`` added (higher = shorter output).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path
from typing import Any

from agents.ranker_config import LABEL_SOURCES, LOSSES, POOLINGS, PROMPT_FORMATS, SELECT_ON


def add_train_ranker_args(p: argparse.ArgumentParser) -> None:
    from agents.ranker_backbones import BACKBONES
    from agents.ranker_config import RankerTrainConfig

    d = RankerTrainConfig()
    p.add_argument("--backbone", "-b", choices=sorted(BACKBONES), default=d.backbone)
    p.add_argument("--target-model", "-m", default=d.target_model,
                   help="whose response lengths to rank by (a model in the shipped AlpacaEval file)")
    p.add_argument("--loss", "-l", choices=LOSSES, default=d.loss)
    p.add_argument("--epochs", "-e", type=int, default=d.epochs,
                   help="training epochs; the best validation epoch is kept (default %(default)s; the paper's 16)")
    p.add_argument("--list-size", type=int, default=d.list_size, help="prompts per ranking list")
    p.add_argument("--lr", type=float, default=d.lr,
                   help="backbone learning rate (default %(default)s; the paper's 2e-5)")
    p.add_argument("--head-lr", type=float, default=d.head_lr, help="learning rate of the new linear head")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--bucket", type=int, default=d.bucket,
                   help="tokens per training-label bucket (paper: 10); target and multi labels only, "
                        "consensus labels are continuous")
    p.add_argument("--max-length", type=int, default=None, help="prompt truncation in backbone tokens")
    p.add_argument("--max-train", type=int, default=None, help="train on a seeded subset of N prompts")
    p.add_argument("--label-source", choices=LABEL_SOURCES, default=d.label_source,
                   help="training labels: the target model's lengths (target), a consensus of per-model "
                        "standardised log lengths over the target and --aux-models (consensus), or one "
                        "loss per model, summed (multi); validation and test always use the target's lengths "
                        "(default %(default)s: the best mean validation tau over three target models x four "
                        "splits; 'target' with --lr 2e-5 --epochs 16 is the LTR paper's recipe)")
    p.add_argument("--aux-models", default=d.aux_models,
                   help="auxiliary models for consensus/multi labels: all (every other model in the "
                        "shipped file), none, or a comma-separated list; read for training (and, with --select-on "
                        "consensus, validation) prompts, never for test prompts "
                        "(default %(default)s)")
    p.add_argument("--target-weight", type=float, default=d.target_weight,
                   help="weight of the target model's own label against the auxiliary models' mean, in [0, 1] "
                        "(default %(default)s)")
    p.add_argument("--select-on", choices=SELECT_ON, default=d.select_on,
                   help="what the validation tau that keeps the best epoch is measured against: the target "
                        "model's lengths, or the consensus of the validation prompts' lengths (default %(default)s)")
    p.add_argument("--freeze-layers", type=int, default=d.freeze_layers,
                   help="keep the embeddings and the lowest N encoder layers at their pretrained weights "
                        "(default %(default)s)")
    p.add_argument("--train-on-val", action="store_true",
                   help="refit: train on the training and validation prompts for exactly --epochs epochs and keep "
                        "the last (after a recipe and epoch count were chosen on validation); the validation tau "
                        "printed is then in-sample, the test prompts stay unseen")
    p.add_argument("--pooling", choices=POOLINGS, default=None,
                   help="hidden states -> one vector: mean over tokens or the last token (default: the backbone's "
                        "own, mean for minilm-l6, last for smollm2-135m)")
    p.add_argument("--prompt-format", choices=PROMPT_FORMATS, default=d.prompt_format,
                   help="raw prompt text, or the prompt as the user turn of the backbone's chat template with the "
                        "generation prompt (backbones with a chat template: smollm2-135m) (default %(default)s)")
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--split-seed", type=int, default=d.split_seed,
                   help="seed of the train/val/test split by prompt (the -test workloads use 0)")
    p.add_argument("--device", default="cpu", help="torch device to train on (cpu, cuda)")
    p.add_argument("--tf32", action="store_true",
                   help="allow TF32 matrix products on CUDA (faster; how the BENCHMARKS.md SmolLM2 rankers trained)")
    p.add_argument("--out", type=Path, default=None,
                   help="run folder (default runs/ranker/<target>-<backbone>-<loss>-s<seed>)")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON to FILE")
    p.add_argument("--progress", choices=("auto", "on", "off"), default="auto",
                   help="progress bar (auto: only on a terminal)")


def _summary_writer(log_dir: Path):
    from agents.ranker_backbones import require_module

    require_module("tensorboard", "tensorboard", "TensorBoard logging of `servegym train ranker`")
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(log_dir=str(log_dir))


def _rows(header: tuple[str, ...], rows: list[tuple[Any, ...]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths)).rstrip(),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def _clear_missing_package(command: str):
    """Run ``command(args)``; a missing backbone package becomes one error line (exit status 2)."""
    from agents.ranker_backbones import BackboneUnavailableError

    def run(args: argparse.Namespace) -> int:
        try:
            return command(args)
        except BackboneUnavailableError as exc:
            print(f"servegym {command.__name__.replace('_run_', '').replace('_', ' ')}: error: {exc}",
                  file=sys.stderr)
            return 2

    return run


def _run_train_ranker(args: argparse.Namespace) -> int:
    from agents.ranker import Ranker
    from agents.ranker_backbones import check_backbone
    from agents.ranker_baselines import BagOfWordsRidge, PromptLengthPredictor
    from agents.ranker_data import load_ranker_data
    from agents.ranker_training import RankerTrainConfig, aux_models_for, train_ranker
    from agents.ranking_metrics import length_tau

    config = RankerTrainConfig(
        backbone=args.backbone, target_model=args.target_model, loss=args.loss, epochs=args.epochs,
        list_size=args.list_size, lr=args.lr, head_lr=args.head_lr, weight_decay=args.weight_decay,
        bucket=args.bucket, seed=args.seed, split_seed=args.split_seed, max_length=args.max_length,
        max_train=args.max_train, label_source=args.label_source, aux_models=args.aux_models,
        target_weight=args.target_weight, freeze_layers=args.freeze_layers, select_on=args.select_on,
        pooling=args.pooling, prompt_format=args.prompt_format, train_on_val=args.train_on_val)
    check_backbone(config.backbone)  # a missing package fails before any work
    if args.tf32:
        import torch

        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    out = args.out or Path("runs") / "ranker" / f"{args.target_model}-{args.backbone}-{args.loss}-s{args.seed}"
    data = load_ranker_data(config.target_model, config.split_seed, config.max_train,
                            aux_models=aux_models_for(config))
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(
        {"config": dataclasses.asdict(config), "device": args.device, "tf32": args.tf32,
         "command": "servegym " + " ".join(sys.argv[1:])}, indent=2) + "\n")

    plen = PromptLengthPredictor().fit(data.train.prompt_tokens, data.train.lengths)
    bow = BagOfWordsRidge().fit(data.train.prompts, data.train.lengths, data.val.prompts, data.val.lengths)
    baselines = {
        plen.name: (length_tau(plen.score(data.val.prompt_tokens), data.val.lengths),
                    length_tau(plen.score(data.test.prompt_tokens), data.test.lengths),
                    f"sign {plen.sign:+.0f} fitted on train"),
        bow.name: (bow.val_taus[bow.lam], length_tau(bow.score(data.test.prompts), data.test.lengths),
                   f"ridge lambda {bow.lam:g} chosen on val"),
    }

    ranker = Ranker.from_backbone(config.backbone, seed=config.seed, max_length=config.max_length,
                                  pooling=config.pooling, prompt_format=config.prompt_format)
    ranker.to(args.device)
    show = args.progress == "on" or (args.progress == "auto" and sys.stderr.isatty())
    writer = _summary_writer(out / "tb")
    try:
        result = train_ranker(config, data, ranker, writer=writer, progress=show)
        writer.add_scalar("test/kendall_tau", result.test_tau, result.best_epoch)
    finally:
        writer.close()
    checkpoint = result.ranker.save(out / "checkpoint")

    name = f"{config.backbone} {config.loss}" + (
        f" {config.label_source} ({len(data.aux_models)} aux, w {config.target_weight:g})"
        if config.uses_aux() else "")
    kept = (f"last epoch {config.epochs}, validation prompts in training (val tau in-sample)"
            if config.train_on_val else f"best epoch {result.best_epoch}/{config.epochs}")
    rows = [(name, f"{result.test_tau:.3f}", f"{result.val_tau:.3f}", kept),
            (f"{config.backbone} untrained", f"{result.untrained_test_tau:.3f}", f"{result.untrained_val_tau:.3f}",
             "pretrained backbone, random head")]
    rows += [(k, f"{t:.3f}", f"{v:.3f}", note) for k, (v, t, note) in baselines.items()]
    print(f"target model {config.target_model}: {len(data.train)} train / {len(data.val)} val / "
          f"{len(data.test)} test prompts (split seed {config.split_seed}); Kendall's tau-b against true lengths")
    print(_rows(("predictor", "test tau", "val tau", "note"), rows))
    print(f"trained in {result.train_seconds:.1f} s on {args.device}; checkpoint {checkpoint}; "
          f"TensorBoard: tensorboard --logdir {out / 'tb'}")

    payload = {
        "test_kendall_tau": result.test_tau,
        "val_kendall_tau": result.val_tau,
        "baseline_kendall_tau": {k: t for k, (_, t, _) in baselines.items()},
        "untrained_test_kendall_tau": result.untrained_test_tau,
        "target_model": config.target_model, "backbone": config.backbone, "loss": config.loss,
        "label_source": config.label_source, "aux_models": list(data.aux_models),
        "target_weight": config.target_weight, "freeze_layers": config.freeze_layers,
        "select_on": config.select_on, "train_on_val": config.train_on_val, "pooling": result.ranker.meta.pooling,
        "prompt_format": config.prompt_format,
        "epochs": config.epochs, "best_epoch": result.best_epoch,
        "history": [dataclasses.asdict(h) for h in result.history],
        "num_train": len(data.train) + (len(data.val) if config.train_on_val else 0), "num_val": len(data.val), "num_test": len(data.test),
        "train_seconds": result.train_seconds, "device": args.device, "tf32": args.tf32, "checkpoint": str(checkpoint),
    }
    text = json.dumps(payload, indent=2, allow_nan=True) + "\n"
    (out / "results.json").write_text(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    return 0


def add_ranker_score_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", "-c", type=Path, required=True, help="a checkpoint folder from `train ranker`")
    p.add_argument("--input", "-i", type=Path, required=True, help='JSON lines, each {"prompt": "..."}')
    p.add_argument("--output", "-o", type=Path, required=True, help="the same lines with a score added")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")


def read_prompt_lines(path: Path) -> list[dict[str, Any]]:
    """The JSON objects of a JSON-lines file, each with a string ``prompt``; errors name the line."""
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FileNotFoundError(f"cannot read prompts file {path}: {exc.strerror}") from None
    for line, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            raise ValueError(f"{path}:{line}: empty line; expected a JSON object with a 'prompt'")
        try:
            rec = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{line}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str):
            raise ValueError(f"{path}:{line}: expected a JSON object with a string 'prompt', got {raw[:80]!r}")
        records.append(rec)
    if not records:
        raise ValueError(f"{path}: holds no prompts")
    return records


def _run_ranker_score(args: argparse.Namespace) -> int:
    from agents.ranker import Ranker

    records = read_prompt_lines(args.input)
    ranker = Ranker.load(args.checkpoint)
    ranker.to(args.device)
    scores = ranker.score([r["prompt"] for r in records], args.batch_size)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    with open(args.output, "w", encoding="utf-8") as f:
        for rec, s in zip(records, scores.tolist()):
            f.write(json.dumps({**rec, "score": s}, ensure_ascii=False) + "\n")
    print(f"scored {len(records)} prompts with {args.checkpoint} -> {args.output}")
    return 0


run_train_ranker = _clear_missing_package(_run_train_ranker)
run_ranker_score = _clear_missing_package(_run_ranker_score)
