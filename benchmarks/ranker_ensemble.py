"""Rank-average ensemble of rankers trained by ``ranker_tau.py``, weights chosen on validation prompts.

Each ``--member`` is a ``ranker_tau.py --json`` file, optionally ``FILE:PREDICTOR`` (the
row's predictor name, e.g. ``minilm-l6 listmle default``) when the file holds more than
one ranker. For every split seed that all members were trained on, the members' scores of
the validation and test prompts are turned into ranks and averaged with one weight vector
for all splits (``agents.ranker_ensemble``): the grid point (``--step``) with the best mean
validation tau. The test prompts play no part in the choice. The members may come from
different runs or devices (one backbone each, say), as long as they ranked the same split.

    python benchmarks/ranker_ensemble.py --member minilm.json --member smollm2.json
        [--model Meta-Llama-3-8B-Instruct] [--step 0.1 | --weights W1,W2,...] [--markdown] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from print_table import print_table  # noqa: E402  (beside this script)


def load_member(spec: str, model: str) -> tuple[str, dict[int, dict]]:
    """(predictor name, split seed -> row with scores) of one ``FILE[:PREDICTOR]`` member."""
    path, _, predictor = spec.partition(":")
    try:
        payload = json.loads(Path(path).read_text())
    except OSError as exc:
        raise SystemExit(f"ranker_ensemble.py: cannot read member file {path!r}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise SystemExit(f"ranker_ensemble.py: member file {path!r} is not JSON ({exc.msg})") from None
    rows = [r for r in payload.get("rows", []) if isinstance(r, dict) and "val_scores" in r and r.get("model") == model]
    names = list(dict.fromkeys(r["predictor"] for r in rows))
    if not names:
        raise SystemExit(f"ranker_ensemble.py: {path!r} holds no ranker rows with scores for target model {model!r} "
                         "(write it with a ranker_tau.py that saves scores)")
    if not predictor:
        if len(names) > 1:
            raise SystemExit(f"ranker_ensemble.py: {path!r} holds several rankers; name one as {path}:PREDICTOR, "
                             f"one of: {', '.join(names)}")
        predictor = names[0]
    if predictor not in names:
        raise SystemExit(f"ranker_ensemble.py: no predictor {predictor!r} in {path!r}; available: {', '.join(names)}")
    return predictor, {r["split_seed"]: r for r in rows if r["predictor"] == predictor}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--member", action="append", required=True, help="FILE or FILE:PREDICTOR (two or more)")
    p.add_argument("--model", default="Meta-Llama-3-8B-Instruct", help="target model")
    p.add_argument("--step", type=float, default=0.1, help="weight grid step (must divide 1)")
    p.add_argument("--weights", default=None, metavar="W1,W2,...",
                   help="use these weights (one per --member, normalised to sum 1) instead of choosing on validation")
    p.add_argument("--markdown", action="store_true")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if len(args.member) < 2:
        raise SystemExit("ranker_ensemble.py: an ensemble needs at least two --member")

    from agents.ranker_data import load_ranker_data
    from agents.ranker_ensemble import choose_weights, rank_average, weight_grid
    from agents.ranking_metrics import length_tau

    from train.ranker_option import parse_ranker_weights

    fixed = None
    if args.weights is not None:
        try:
            given = parse_ranker_weights(args.weights, len(args.member), "--member", flag="--weights")
        except ValueError as exc:
            raise SystemExit(f"ranker_ensemble.py: {exc}") from None
        fixed = tuple(w / sum(given) for w in given)
    else:
        try:
            weight_grid(len(args.member), args.step)
        except ValueError as exc:
            raise SystemExit(f"ranker_ensemble.py: --step: {exc}") from None
    members = [load_member(spec, args.model) for spec in args.member]
    seeds = sorted(set.intersection(*(set(rows) for _, rows in members)))
    if not seeds:
        raise SystemExit("ranker_ensemble.py: the members share no split seed: "
                         + "; ".join(f"{name}: {sorted(rows)}" for name, rows in members))
    val_scores, val_lengths, test_scores, test_lengths = [], [], [], []
    for seed in seeds:
        data = load_ranker_data(args.model, seed)
        for (name, rows), spec in zip(members, args.member):
            row = rows[seed]
            if len(row["val_scores"]) != len(data.val) or len(row["test_scores"]) != len(data.test):
                raise SystemExit(f"ranker_ensemble.py: {spec}: split {seed} has {len(row['val_scores'])} validation "
                                 f"and {len(row['test_scores'])} test scores; the split has {len(data.val)} and "
                                 f"{len(data.test)} prompts")
            if not np.isclose(length_tau(row["test_scores"], data.test.lengths), row["test_tau"], atol=1e-9):
                raise SystemExit(f"ranker_ensemble.py: {spec}: split {seed}'s test scores do not give its recorded "
                                 "test tau (another split or data file?)")
        val_scores.append([rows[seed]["val_scores"] for _, rows in members])
        test_scores.append([rows[seed]["test_scores"] for _, rows in members])
        val_lengths.append(data.val.lengths)
        test_lengths.append(data.test.lengths)

    if fixed is None:
        weights, val_mean = choose_weights(val_scores, val_lengths, args.step)
    else:
        weights = fixed
        val_mean = float(np.mean([length_tau(rank_average(m, weights), y) for m, y in zip(val_scores, val_lengths)]))
    table, out = [], {"model": args.model, "split_seeds": seeds, "weights": list(weights),
                      "weights_given": fixed is not None, "members": []}
    for i, (name, rows) in enumerate(members):
        tests = [rows[s]["test_tau"] for s in seeds]
        vals = [rows[s]["val_tau"] for s in seeds]
        table.append((name, f"{weights[i]:.3g}", *[f"{t:.3f}" for t in tests], f"{np.mean(tests):.3f}",
                      f"{np.mean(vals):.3f}"))
        out["members"].append({"predictor": name, "file": args.member[i], "test_tau": tests, "val_tau": vals})
    ens_test = [length_tau(rank_average(m, weights), y) for m, y in zip(test_scores, test_lengths)]
    ens_val = [length_tau(rank_average(m, weights), y) for m, y in zip(val_scores, val_lengths)]
    table.append(("rank-average ensemble", "-", *[f"{t:.3f}" for t in ens_test], f"{np.mean(ens_test):.3f}",
                  f"{val_mean:.3f}"))
    out.update(ensemble_test_tau=ens_test, ensemble_val_tau=ens_val)
    how = "given (--weights)" if fixed is not None else \
        f"chosen on mean validation tau over the splits (grid step {args.step:g})"
    print(f"target model {args.model}; split seeds {','.join(map(str, seeds))}; weights {how}: "
          f"{', '.join(f'{w:.3g}' for w in weights)}")
    header = ("predictor", "weight", *[f"test s{s}" for s in seeds], "test mean", "val mean")
    print_table(header, table, args.markdown)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
