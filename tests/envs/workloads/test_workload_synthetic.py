import numpy as np
import pytest

from envs.workloads import (ClientSpec, Constant, Deterministic, Gamma, LogNormal, MultiClientWorkload,
                            MultiTurn, OnOff, Poisson, Ramp, SharedDocument, Uniform)


def signature(specs):
    return [(s.request_id, s.client_id, s.arrival_time, s.prompt_len, s.output_len, s.parent_id,
             s.think_time_s, tuple(s.prompt.block_keys(16)[:3])) for s in specs]


def mixed():
    return MultiClientWorkload("mixed", "test", [
        ClientSpec(0, Gamma(1.0, 2.0), LogNormal(300, 1.0), LogNormal(100, 1.0), slo_ttft_s=1.0, slo_tpot_s=0.1),
        ClientSpec(3, Poisson(0.5), Uniform(10, 20), Constant(5), SharedDocument(500, 3), online=False),
        ClientSpec(1, Deterministic(0.7), Constant(64), Constant(64),
                   MultiTurn(Uniform(2, 3), think_time_s=1.0)),
    ], duration_s=120.0)


def test_same_seed_identical_different_seed_different():
    w = mixed()
    assert signature(w.generate(4)) == signature(w.generate(4))
    assert signature(w.generate(4)) != signature(w.generate(5))


def test_sorted_by_time_then_client_with_ids_in_order():
    specs = mixed().generate(0)
    assert [s.request_id for s in specs] == list(range(len(specs)))
    keys = [(s.arrival_time, s.client_id) for s in specs]
    assert keys == sorted(keys)
    assert {s.client_id for s in specs} == {0, 1, 3}
    assert all(0.0 <= s.arrival_time < 120.0 for s in specs)


def test_client_attributes_reach_every_request():
    for s in mixed().generate(1):
        if s.client_id == 0:
            assert (s.slo_ttft_s, s.slo_tpot_s, s.online) == (1.0, 0.1, True)
        elif s.client_id == 3:
            assert (s.slo_ttft_s, s.online) == (None, False)


def test_num_requests_gives_the_earliest_requests():
    w = mixed()
    specs = w.generate(2, num_requests=500)
    assert len(specs) == 500
    assert [s.request_id for s in specs] == list(range(500))
    ids = set(range(500))
    assert all(s.parent_id in ids for s in specs if s.parent_id is not None)
    # the count ignores the 120 s duration
    assert specs[-1].arrival_time > 120.0


def test_num_requests_zero_and_negative():
    assert mixed().generate(0, num_requests=0) == []
    with pytest.raises(ValueError, match="num_requests must be >= 0, got -1"):
        mixed().generate(0, num_requests=-1)


def test_default_num_requests_when_no_duration():
    w = MultiClientWorkload("count", "test", [ClientSpec(0, Poisson(1.0), Constant(8), Constant(8))],
                            default_num_requests=40)
    assert len(w.generate(0)) == 40
    assert len(w.generate(0, num_requests=7)) == 7


def test_adding_a_client_leaves_the_others_unchanged():
    a = ClientSpec(0, Poisson(1.0), LogNormal(100, 1.0), LogNormal(50, 1.0))
    b = ClientSpec(1, OnOff(2.0, 10.0, 10.0), Constant(8), Constant(8))
    only_a = MultiClientWorkload("w", "", [a], duration_s=60.0).generate(9)
    both = MultiClientWorkload("w", "", [a, b], duration_s=60.0).generate(9)
    pick = lambda specs: [(s.arrival_time, s.prompt_len, s.output_len) for s in specs if s.client_id == 0]
    assert pick(only_a) == pick(both)


def test_too_few_requests_is_an_error():
    w = MultiClientWorkload("short", "", [ClientSpec(0, Ramp(2.0, 0.0, 10.0), Constant(8), Constant(8))],
                            duration_s=10.0)
    with pytest.raises(ValueError, match="fewer than num_requests=1000"):
        w.generate(0, num_requests=1000)


def test_seed_must_be_non_negative_integer():
    with pytest.raises(ValueError, match="seed must be >= 0, got -1"):
        mixed().generate(-1)
    with pytest.raises(TypeError, match="seed must be an integer"):
        mixed().generate(1.5)
    assert signature(mixed().generate(np.int64(3))) == signature(mixed().generate(3))


@pytest.mark.parametrize("kwargs, match", [
    (dict(clients=[]), "at least one client"),
    (dict(clients=[ClientSpec(0, Poisson(1.0), Constant(1), Constant(1))] * 2), "unique"),
    (dict(clients=[ClientSpec(0, Poisson(1.0), Constant(1), Constant(1))], duration_s=None), "duration_s or"),
    (dict(clients=[ClientSpec(0, Poisson(1.0), Constant(1), Constant(1))], duration_s=-5.0), "-5"),
])
def test_workload_validation(kwargs, match):
    kwargs.setdefault("duration_s", 10.0)
    with pytest.raises(ValueError, match=match):
        MultiClientWorkload("bad", "", **kwargs)


def test_client_validation():
    with pytest.raises(ValueError, match="client_id.*-1"):
        ClientSpec(-1, Poisson(1.0), Constant(1), Constant(1))
    with pytest.raises(ValueError, match="slo_ttft_s.*0"):
        ClientSpec(0, Poisson(1.0), Constant(1), Constant(1), slo_ttft_s=0.0)
