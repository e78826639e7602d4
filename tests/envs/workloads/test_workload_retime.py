import dataclasses
import math

import numpy as np
import pytest

from envs.workloads import get_workload, retime_poisson


def test_mean_rate_and_order():
    specs = get_workload("arena-27").generate(0)
    out = retime_poisson(specs, rate=5.0, seed=3)
    assert [s.request_id for s in out] == [s.request_id for s in specs]
    assert [(s.client_id, s.prompt_len, s.output_len) for s in out] == \
           [(s.client_id, s.prompt_len, s.output_len) for s in specs]
    times = np.array([s.arrival_time for s in out])
    assert times[0] == 0.0 and np.all(np.diff(times) >= 0)
    assert (len(times) - 1) / times[-1] == pytest.approx(5.0, rel=0.06)


def test_large_sample_rate():
    specs = get_workload("azure-conv").generate(0)
    times = np.array([s.arrival_time for s in retime_poisson(specs, rate=20.0, seed=1)])
    gaps = np.diff(times)
    assert gaps.mean() == pytest.approx(1 / 20.0, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)


def test_seeded():
    specs = get_workload("vtc-overload-2").generate(0, num_requests=100)
    a = [s.arrival_time for s in retime_poisson(specs, 2.0, 7)]
    assert a == [s.arrival_time for s in retime_poisson(specs, 2.0, 7)]
    assert a != [s.arrival_time for s in retime_poisson(specs, 2.0, 8)]


def test_children_keep_parent_and_offset():
    specs = get_workload("multi-turn-chat").generate(0, num_requests=300)
    specs = [dataclasses.replace(s, arrival_time=s.arrival_time + 0.25) if s.parent_id is not None else s
             for s in specs]
    out = retime_poisson(specs, 1.0, 0)
    new = {s.request_id: s for s in out}
    old = {s.request_id: s for s in specs}
    roots = [s for s in out if s.parent_id is None]
    assert (len(roots) - 1) / roots[-1].arrival_time == pytest.approx(1.0, rel=0.3)
    for s in out:
        assert s.parent_id == old[s.request_id].parent_id
        if s.parent_id is not None:
            offset = old[s.request_id].arrival_time - old[s.parent_id].arrival_time
            assert s.arrival_time - new[s.parent_id].arrival_time == pytest.approx(offset)


@pytest.mark.parametrize("rate", [0.0, -1.0, math.nan, math.inf])
def test_bad_rate(rate):
    with pytest.raises(ValueError, match=f"rate.*{rate}"):
        retime_poisson([], rate, 0)
