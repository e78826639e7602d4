import numpy as np
import pytest

from envs.tokens import ConcatTokens
from envs.workloads import (ClientSpec, Constant, LogNormal, MultiClientWorkload, MultiTurn, NoSharing,
                            Poisson, SharedDocument, StreamIds, SystemPrompt, Uniform)
from tests.helpers import common_prefix

BS = 16



def workload(program, clients=1, rate=2.0, duration=100.0, prompt=Constant(40), output=Constant(30)):
    return MultiClientWorkload("test-" + type(program).__name__, "test",
                               [ClientSpec(c, Poisson(rate), prompt, output, program) for c in range(clients)],
                               duration_s=duration)


def all_keys(specs):
    return [set(s.prompt.block_keys(BS)) for s in specs]


def test_no_sharing_shares_no_block():
    specs = workload(NoSharing(), clients=2).generate(0)
    seen = set()
    for keys in all_keys(specs):
        assert not (keys & seen)
        seen |= keys


@pytest.mark.parametrize("doc_len", [1000, 1024])
def test_shared_document_questions_share_exactly_the_document_blocks(doc_len):
    specs = workload(SharedDocument(doc_len, questions_per_doc=5)).generate(3, num_requests=15)
    doc_blocks = doc_len // BS
    keys = [s.prompt.block_keys(BS) for s in specs]
    assert all(s.prompt_len == doc_len + 40 for s in specs)
    for group in range(3):
        members = keys[5 * group: 5 * group + 5]
        for other in members[1:]:
            assert common_prefix(members[0], other) == doc_blocks
    # different documents share no block at all
    for g1 in range(3):
        for g2 in range(g1 + 1, 3):
            assert not set(keys[5 * g1]) & set(keys[5 * g2])


def test_shared_document_draws_doc_length_once_per_document():
    program = SharedDocument(LogNormal(4000, 0.3, lo=1000, hi=8000), questions_per_doc=4,
                             question_len=Uniform(10, 20))
    specs = workload(program, prompt=Constant(999)).generate(5, num_requests=12)
    for group in range(3):
        lengths = {s.prompt.parts[0].length for s in specs[4 * group: 4 * group + 4]}
        assert len(lengths) == 1
    assert all(10 <= s.prompt.parts[1].length <= 20 for s in specs)


def test_system_prompt_shared_within_client_not_across():
    specs = workload(SystemPrompt(1500), clients=3).generate(1, num_requests=30)
    by_client = {}
    for s in specs:
        assert s.prompt_len == 1540
        by_client.setdefault(s.client_id, []).append(s.prompt.block_keys(BS))
    for keys in by_client.values():
        for other in keys[1:]:
            assert common_prefix(keys[0], other) == 1500 // BS
    firsts = [set(k[0]) for k in by_client.values()]
    assert not firsts[0] & firsts[1] and not firsts[1] & firsts[2]


def multi_turn_specs(seed=0, **kw):
    program = MultiTurn(Uniform(2, 6), LogNormal(50, 1.0, lo=1, hi=500), think_time_s=7.5)
    return workload(program, clients=2, rate=0.5, duration=200.0, prompt=LogNormal(100, 1.0, lo=1, hi=900),
                    output=LogNormal(80, 1.0, lo=1, hi=700)).generate(seed, **kw)


def test_multi_turn_history_grows_and_reuses_parent_blocks():
    specs = multi_turn_specs()
    by_id = {s.request_id: s for s in specs}
    children = [s for s in specs if s.parent_id is not None]
    assert children
    for child in children:
        parent = by_id[child.parent_id]
        assert parent.request_id < child.request_id
        assert child.client_id == parent.client_id
        assert child.arrival_time == parent.arrival_time
        assert child.think_time_s == 7.5
        assert parent.output_tokens is not None and parent.output_tokens.length == parent.output_len
        history = ConcatTokens([parent.prompt, parent.output_tokens])
        assert child.prompt_len > history.length
        full = history.length // BS
        assert child.prompt.block_keys(BS)[:full] == history.block_keys(BS)[:full]
        # the history is a token-exact prefix, not only block-aligned
        np.testing.assert_array_equal(child.prompt.token_ids()[: history.length], history.token_ids())


def test_multi_turn_conversation_lengths_and_roots():
    specs = multi_turn_specs(seed=4)
    roots = [s for s in specs if s.parent_id is None]
    assert all(s.think_time_s == 0.0 for s in roots)
    turns = {}
    root_of = {}
    for s in specs:
        root_of[s.request_id] = s.request_id if s.parent_id is None else root_of[s.parent_id]
        turns[root_of[s.request_id]] = turns.get(root_of[s.request_id], 0) + 1
    assert set(turns.values()) <= set(range(2, 7))
    assert len(set(turns.values())) > 1
    # different conversations share no block
    first = {root_of[s.request_id]: set(s.prompt.block_keys(BS)) for s in reversed(specs)}
    sets = list(first.values())
    for i in range(len(sets)):
        for j in range(i + 1, len(sets)):
            assert not sets[i] & sets[j]


def test_multi_turn_cut_by_count_keeps_parents():
    specs = multi_turn_specs(num_requests=37)
    assert len(specs) == 37
    ids = {s.request_id for s in specs}
    assert ids == set(range(37))
    assert all(s.parent_id in ids for s in specs if s.parent_id is not None)


def test_stream_ids_distinct_across_clients_seeds_and_workloads():
    seen = set()
    for workload_key in (1, 2):
        for seed in (0, 1):
            for client in (0, 1, 2):
                streams = StreamIds(workload_key, seed, client)
                seen.update(streams.next() for _ in range(100))
    assert len(seen) == 2 * 2 * 3 * 100


def test_program_parameters_validated():
    with pytest.raises(ValueError, match="system_len.*0"):
        SystemPrompt(0)
    with pytest.raises(ValueError, match="questions_per_doc.*0"):
        SharedDocument(100, 0)
    with pytest.raises(ValueError, match="think_time_s.*-1"):
        MultiTurn(3, think_time_s=-1.0)
    with pytest.raises(TypeError, match="turns"):
        MultiTurn("three")
