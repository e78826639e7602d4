"""Pin ``gpu_backend.decode_split``: a profile takes another fit's split between the context sum and the
longest context, keeps its own times for equal contexts, and refuses donors that do not fit."""

from __future__ import annotations

import json

import pytest

from gpu_backend.decode_split import longest_share, transfer_longest_shares
from gpu_backend.profiles import PROFILE_DIR


def _profile(per_token, per_longest=None):
    data = json.loads((PROFILE_DIR / "fitted" / "h200-llama-8b-fitted.json").read_text())
    table = {"num_seqs": [1, 8, 64], "intercept_s": [1e-3, 1.1e-3, 1.4e-3], "per_context_token_s": per_token,
             "round_up": True}
    if per_longest is not None:
        table["per_longest_token_s"] = per_longest
    data["cost_model"]["decode_table"] = table
    return data


def test_equal_context_times_are_kept_and_the_split_is_the_donors():
    base = _profile([3e-8, 1e-8, 8e-9])
    donor = _profile([2e-8, 5e-9, 4e-9], [0.0, 4e-8, 2.56e-7])     # shares 0, 0.5, 0.5
    assert longest_share(8, 5e-9, 4e-8) == pytest.approx(0.5)
    out = transfer_longest_shares(base, donor, "the donor")
    t = out["cost_model"]["decode_table"]
    assert t["per_context_token_s"] == pytest.approx([3e-8, 0.5e-8, 4e-9])
    assert t["per_longest_token_s"] == pytest.approx([0.0, 4e-8, 2.56e-7])
    for n, b, b2, c2 in zip(t["num_seqs"], base["cost_model"]["decode_table"]["per_context_token_s"],
                            t["per_context_token_s"], t["per_longest_token_s"]):
        assert b2 * n * 1000 + c2 * 1000 == pytest.approx(b * n * 1000)     # n sequences of 1,000 tokens
    assert t["intercept_s"] == base["cost_model"]["decode_table"]["intercept_s"]
    assert out["description"].endswith("in the proportions of the donor, fitted with batches of unequal contexts.")
    assert "per_longest_token_s" not in base["cost_model"]["decode_table"]     # the base is not changed


def test_donors_that_do_not_fit_are_refused():
    base = _profile([3e-8, 1e-8, 8e-9])
    with pytest.raises(ValueError, match="plain.json has no longest-context term"):
        transfer_longest_shares(base, _profile([2e-8, 5e-9, 4e-9]), "plain.json")
    other = _profile([2e-8, 5e-9, 4e-9], [0.0, 1e-8, 1e-8])
    other["cost_model"]["decode_table"]["num_seqs"] = [1, 8, 128]
    with pytest.raises(ValueError, match=r"different batch sizes: \[1, 8, 64\] vs \[1, 8, 128\] \(o.json\)"):
        transfer_longest_shares(base, other, "o.json")
    small = _profile([2e-8, 5e-9, 4e-9], [0.0, 1e-8, 1e-8])
    small["model"] = {**small["model"], "name": "llama-1b"}
    with pytest.raises(ValueError, match="s.json is fitted for model 'llama-1b', the base for 'llama-8b'"):
        transfer_longest_shares(base, small, "s.json")
    with pytest.raises(ValueError, match="both profiles need cost_model.decode_table"):
        transfer_longest_shares({"cost_model": {}}, small, "s.json")
