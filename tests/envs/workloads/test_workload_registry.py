import numpy as np
import pytest

from envs.workloads import (ClientSpec, Constant, MultiClientWorkload, Poisson, UnknownWorkloadError,
                            get_workload, list_workloads, register_workload)
from envs.workloads.registry import _REGISTRY

TRACES = {"mooncake-conversation": 12_031, "azure-conv": 19_366, "arena-27": 1_500}
SYNTHETIC = ["poisson-single", "gamma-multi-client", "vtc-overload-2", "onoff-2clients", "ramp-2clients",
             "shared-doc-qa", "multi-turn-chat", "system-prompt"]


def by_client(specs):
    out = {}
    for s in specs:
        out.setdefault(s.client_id, []).append(s)
    return out


def test_listing_names_kinds_and_sizes():
    infos = {info.name: info for info in list_workloads()}
    assert set(TRACES) | set(SYNTHETIC) <= set(infos)
    for name, count in TRACES.items():
        assert infos[name].kind == "trace" and infos[name].num_requests == count
    for name in SYNTHETIC:
        assert infos[name].kind == "synthetic" and infos[name].num_requests is None
        assert infos[name].description
    names = [info.name for info in list_workloads()]
    assert names == sorted(names)
    name, description, kind, size = list_workloads()[0]  # a plain tuple as well
    assert isinstance(name, str)


def test_unknown_name_lists_available():
    with pytest.raises(UnknownWorkloadError) as info:
        get_workload("no-such-workload")
    message = str(info.value)
    assert "no-such-workload" in message
    for name in list(TRACES) + SYNTHETIC:
        assert name in message
    assert isinstance(info.value, KeyError)


def test_register_duplicate_and_replace():
    w = MultiClientWorkload("test-registry-tmp", "tmp", [ClientSpec(0, Poisson(1.0), Constant(4), Constant(4))],
                            duration_s=5.0)
    try:
        assert register_workload(w) is w
        assert get_workload("test-registry-tmp") is w
        other = MultiClientWorkload("test-registry-tmp", "tmp2", w.clients, duration_s=6.0)
        with pytest.raises(ValueError, match="already registered"):
            register_workload(other)
        register_workload(other, replace=True)
        assert get_workload("test-registry-tmp") is other
    finally:
        _REGISTRY.pop("test-registry-tmp", None)


def test_register_refuses_non_workloads():
    with pytest.raises(TypeError, match="not a workload"):
        register_workload(object())


@pytest.mark.parametrize("name", SYNTHETIC)
def test_synthetic_builtins_are_seeded_finite_and_consistent(name):
    w = get_workload(name)
    a, b = w.generate(0), w.generate(0)
    assert 200 < len(a) < 10_000
    assert [(s.arrival_time, s.client_id, s.prompt_len, s.output_len, s.parent_id) for s in a] == \
           [(s.arrival_time, s.client_id, s.prompt_len, s.output_len, s.parent_id) for s in b]
    c = w.generate(1)
    assert [(s.arrival_time, s.prompt_len) for s in a] != [(s.arrival_time, s.prompt_len) for s in c]
    assert [s.request_id for s in a] == list(range(len(a)))
    assert all(0.0 <= s.arrival_time < w.duration_s for s in a)
    assert all(s.parent_id < s.request_id for s in a if s.parent_id is not None)
    assert len(w.generate(0, num_requests=50)) == 50


@pytest.mark.parametrize("name", list(TRACES))
def test_trace_builtins_generate_counts(name):
    w = get_workload(name)
    specs = w.generate(0, num_requests=30)
    assert len(specs) == 30 and specs[0].arrival_time == 0.0


def test_poisson_single_shape():
    specs = get_workload("poisson-single").generate(0)
    assert len(specs) == pytest.approx(1200, rel=0.1)
    assert np.mean([s.prompt_len for s in specs]) == pytest.approx(1000, rel=0.15)
    assert np.mean([s.output_len for s in specs]) == pytest.approx(200, rel=0.15)


def test_vtc_overload_counts():
    clients = by_client(get_workload("vtc-overload-2").generate(0))
    assert len(clients[0]) == 900 and len(clients[1]) == 1800
    assert all(s.prompt_len == 256 and s.output_len == 256 for s in clients[0] + clients[1])


def test_onoff_client_silent_in_off_periods():
    clients = by_client(get_workload("onoff-2clients").generate(0))
    assert all(s.arrival_time % 120.0 < 60.0 for s in clients[0])
    assert len(clients[1]) == 1200


def test_ramp_client_speeds_up():
    ramp = np.array([s.arrival_time for s in by_client(get_workload("ramp-2clients").generate(0))[1]])
    assert np.sum(ramp >= 400) > 3 * np.sum(ramp < 200)


def test_shared_doc_qa_shares_documents():
    specs = get_workload("shared-doc-qa").generate(0)
    first = by_client(specs)[0][:20]
    doc_blocks = first[0].prompt.parts[0].length // 16
    keys = [s.prompt.block_keys(16) for s in first]
    assert all(k[:doc_blocks] == keys[0][:doc_blocks] for k in keys)
    assert 2048 <= first[0].prompt.parts[0].length <= 16384


def test_system_prompt_clients():
    clients = by_client(get_workload("system-prompt").generate(0))
    assert len(clients) == 8
    for specs in clients.values():
        assert all(s.prompt.parts[0].length == 1500 for s in specs)
        assert len({s.prompt.block_keys(16)[0] for s in specs}) == 1
    assert len({specs[0].prompt.block_keys(16)[0] for specs in clients.values()}) == 8


def test_multi_turn_chat_conversations():
    specs = get_workload("multi-turn-chat").generate(0)
    turns = {}
    root_of = {}
    for s in specs:
        root_of[s.request_id] = s.request_id if s.parent_id is None else root_of[s.parent_id]
        turns[root_of[s.request_id]] = turns.get(root_of[s.request_id], 0) + 1
    assert set(turns.values()) <= set(range(2, 9)) and max(turns.values()) == 8
    assert all(s.think_time_s == 10.0 for s in specs if s.parent_id is not None)
