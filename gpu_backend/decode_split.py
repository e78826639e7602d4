"""Give a fitted profile's decode table the longest-context term another fit measured.

Why: a decode step's time depends on the longest context as well as on the sum
(``DecodeStepTime``), and only a sweep with batches of unequal contexts can tell the two
apart (``Sweep.decode_unequal``). Profiles fitted before that sweep existed have one cost per
context token per batch size. How a graph's time splits between the sum and the longest is
set by the kernel's parallelism (splits per sequence, programs per wave), so it carries over
from one lease of the same GPU to another, while the rates themselves move with the machine
(its host CPU above all). ``transfer_longest_shares`` keeps the base profile's times for
batches of equal contexts exactly and splits each row's cost per token in the donor's
proportions.
"""

from __future__ import annotations

import json


def longest_share(num_seqs: int, per_token_s: float, per_longest_s: float) -> float:
    """The part of an equal-context batch's context cost that the longest-context term carries."""
    total = num_seqs * per_token_s + per_longest_s
    return per_longest_s / total if total > 0 else 0.0


def transfer_longest_shares(base: dict, donor: dict, donor_source: str) -> dict:
    """``base`` (a fitted profile's JSON) whose decode rows split their context cost between the sum and
    the longest context as ``donor``'s rows do. A batch of ``n`` equal contexts ``L`` costs what it cost
    in ``base``: ``b * n * L`` becomes ``b * (1 - s) * n * L + b * n * s * L``."""
    try:
        table = base["cost_model"]["decode_table"]
        shares_from = donor["cost_model"]["decode_table"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"both profiles need cost_model.decode_table (missing {exc})") from None
    if table["num_seqs"] != shares_from["num_seqs"]:
        raise ValueError(f"the decode tables cover different batch sizes: {table['num_seqs']} vs "
                         f"{shares_from['num_seqs']} ({donor_source})")
    if not shares_from.get("per_longest_token_s"):
        raise ValueError(f"{donor_source} has no longest-context term: fit it with Sweep.decode_unequal")
    if base["model"] != donor["model"]:
        raise ValueError(f"{donor_source} is fitted for model {donor['model'].get('name')!r}, the base for "
                         f"{base['model'].get('name')!r}")
    out = json.loads(json.dumps(base))
    rows = zip(table["num_seqs"], table["per_context_token_s"], shares_from["per_context_token_s"],
               shares_from["per_longest_token_s"])
    per_token, per_longest = [], []
    for n, b, donor_b, donor_c in rows:
        s = longest_share(n, donor_b, donor_c)
        per_token.append(b * (1.0 - s))
        per_longest.append(b * n * s)
    out["cost_model"]["decode_table"]["per_context_token_s"] = per_token
    out["cost_model"]["decode_table"]["per_longest_token_s"] = per_longest
    out["description"] = (f"{base.get('description', '')} Decode rows split between the context sum and the "
                          f"longest context in the proportions of {donor_source}, fitted with batches of "
                          f"unequal contexts.").strip()
    return out
