"""D²LPM's dispatcher (papers.md §3.3): the dispatch choice on hand-built replica states, its books,
the approximate prefix tree, and a real cluster run with local DLPM on every replica."""

from __future__ import annotations

import pytest

import baselines  # noqa: F401
from baselines.d2lpm import D2LPM, GlobalPrefixTree, chain_keys
from baselines.dlpm import DEFAULT_QUANTUM, DLPM
from envs.cluster import ClusterEngine
from envs.engine_config import EngineConfig
from envs.policy import make_policy
from envs.records import RequestRecord
from envs.request import RequestSpec
from envs.routers import make_router
from envs.tokens import ConcatTokens, UniqueTokens
from gpu_backend.sim_executor import SimExecutor

BS = 16
DOC = UniqueTokens(77, 320)       # 20 full blocks


class Stub:
    """The parts of a ReplicaView the dispatcher reads."""

    def __init__(self, index, outstanding=0, blocks=1000):
        self.index = index
        self.num_outstanding = outstanding
        self.block_size = BS
        self.num_gpu_blocks = blocks


def req(i, client, prompt, out=10):
    return RequestSpec(i, client, 0.0, prompt, out)


def doc_question(i, client, doc=DOC):
    return req(i, client, ConcatTokens([doc, UniqueTokens(500 + i, 17)]))


def dispatcher(n=3, **kw):
    d = D2LPM(**kw)
    reps = [Stub(i) for i in range(n)]
    d.reset(reps)
    return d, reps


def test_first_request_refills_every_replica_and_takes_the_shortest_queue():
    d, reps = dispatcher(worker_quantum=1000.0)
    reps[0].num_outstanding, reps[1].num_outstanding, reps[2].num_outstanding = 5, 2, 2
    w = d.route(doc_question(0, client=7), reps, 0.0)
    assert w == 1                         # nobody holds the prefix: all credited, queues 5/2/2 -> lowest index of 2
    # one refill round of 1000 each, then 337 uncached prompt tokens charged on replica 1
    assert [d.deficit(7, k) for k in range(3)] == [1000.0, 1000.0 - 337, 1000.0]


def test_longest_match_with_credit_beats_a_shorter_queue():
    d, reps = dispatcher(worker_quantum=10_000.0)
    assert d.route(doc_question(0, 1), reps, 0.0) == 0
    reps[0].num_outstanding = 9               # busy, but it holds the document
    assert d.route(doc_question(1, 1), reps, 0.1) == 0
    # the second question matched 20 blocks on replica 0: only its 17-token question is uncached
    assert d.deficit(1, 0) == 10_000.0 - 337 - 17
    # another client with the same document content also goes where the prefix is
    assert d.route(doc_question(2, 2), reps, 0.2) == 0


def test_without_credit_on_the_longest_match_the_shortest_credited_queue_wins():
    d, reps = dispatcher(worker_quantum=400.0)
    assert d.route(doc_question(0, 1), reps, 0.0) == 0      # 400 - 337 = 63 left on replica 0
    d.on_finish(RequestRecord(0, 1, 0.0, 337, 10, num_output_tokens=40, finish_time=1.0, first_token_time=0.5), 0)
    assert d.deficit(1, 0) == 63.0 - 80.0                 # w_q = 2 per output token, at completion
    reps[1].num_outstanding, reps[2].num_outstanding = 3, 1
    assert d.route(doc_question(1, 1), reps, 1.0) == 2       # replica 0 holds it but has no credit; 2 has the shorter queue
    assert d.deficit(1, 2) == 400.0 - 337                 # replica 2 held nothing of it: all 337 charged


def test_refill_happens_only_when_no_replica_has_credit():
    d, reps = dispatcher(n=2, worker_quantum=100.0)
    d.route(req(0, 3, UniqueTokens(1, 250)), reps, 0.0)      # refill to 100/100, then -150 on replica 0
    assert [d.deficit(3, 0), d.deficit(3, 1)] == [-150.0, 100.0]
    assert d.route(req(1, 3, UniqueTokens(2, 250)), reps, 0.0) == 1   # replica 1 still has credit: no refill
    assert [d.deficit(3, 0), d.deficit(3, 1)] == [-150.0, -150.0]
    d.route(req(2, 3, UniqueTokens(3, 10)), reps, 0.0)       # none has credit: 2 rounds bring both to 50
    assert d.deficit(3, 0) == 50.0 - 10 and d.deficit(3, 1) == 50.0
    assert d.deficit(4, 0) == 0.0                          # other clients are untouched


def test_charge_prompt_mode_charges_every_prompt_token():
    d, reps = dispatcher(worker_quantum=10_000.0, charge="prompt")
    d.route(doc_question(0, 1), reps, 0.0)
    d.route(doc_question(1, 1), reps, 0.0)
    assert d.deficit(1, 0) == 10_000.0 - 2 * 337


def test_rejected_requests_are_not_charged_output():
    d, reps = dispatcher(worker_quantum=1000.0)
    d.route(req(0, 1, UniqueTokens(1, 100)), reps, 0.0)
    rec = RequestRecord(0, 1, 0.0, 100, 10, num_output_tokens=0, rejected_reason="too long")
    d.on_finish(rec, 0)
    assert d.deficit(1, 0) == 900.0


def test_prefix_tree_matches_prefix_closed_sets_and_trims_least_recent_first():
    tree = GlobalPrefixTree([5, 100])
    a = chain_keys([1, 2, 3])
    b = chain_keys([1, 2, 9])
    tree.insert(a, 0)
    tree.insert(b, 1)
    assert tree.match(a) == [3, 2]
    assert tree.match(chain_keys([1, 2, 3, 4])) == [3, 2]
    assert tree.match(chain_keys([5])) == [0, 0]
    tree.insert(b, 0)                 # replica 0 now holds 1, 12, 123, 129: 4 of its 5 blocks
    assert tree.num_prefixes(0) == 4
    tree.insert(chain_keys([7, 8]), 0)   # 6 > 5: the least recent (the tail of a) goes first
    assert tree.num_prefixes(0) == 5
    assert tree.match(a) == [2, 2]
    assert tree.match(b) == [3, 3]
    with pytest.raises(ValueError, match="capacity >= 1 block"):
        GlobalPrefixTree([0])


def test_chain_keys_identify_prefixes_not_blocks():
    assert chain_keys([1, 2])[1] != chain_keys([2, 2])[1]
    assert chain_keys([1, 2, 3])[:2] == chain_keys([1, 2])


def test_local_policy_and_validation():
    d = make_router("d2lpm", local_quantum=512.0)
    assert d.local_policy == "dlpm"
    assert d.local_policy_kwargs == {"quantum": 512.0, "w_p": 1.0, "w_q": 2.0}
    assert make_router("d2lpm").local_policy_kwargs["quantum"] == DEFAULT_QUANTUM
    with pytest.raises(ValueError, match="charge must be one of"):
        D2LPM(charge="all")
    with pytest.raises(ValueError, match="quantum must be a finite number > 0"):
        D2LPM(local_quantum=0)
    with pytest.raises(ValueError, match="one KV block size"):
        odd = Stub(1)
        odd.block_size = 32
        D2LPM().reset([Stub(0), odd])


def test_cluster_run_keeps_each_clients_document_on_one_replica():
    docs = [UniqueTokens(900 + c, 1600) for c in range(4)]
    specs = [RequestSpec(i, i % 4, 0.05 * i, ConcatTokens([docs[i % 4], UniqueTokens(3000 + i, 20)]), 8)
             for i in range(64)]

    def run(router):
        cl = ClusterEngine.build(3, lambda: SimExecutor("h100-llama-8b"),
                                 lambda i: make_policy(router.local_policy or "lpm", **router.local_policy_kwargs),
                                 router, EngineConfig(num_gpu_blocks=2000))
        cl.load(specs)
        res = cl.run()
        assert all(r.finished for r in res.merged.requests)
        per_client = {c: {res.assignment[s.request_id] for s in specs if s.client_id == c} for c in range(4)}
        return cl, res, per_client

    cl, d2, spread_d2 = run(make_router("d2lpm"))
    assert all(isinstance(e.policy, DLPM) and e.policy.quantum == DEFAULT_QUANTUM for e in cl.engines)
    _, rr, spread_rr = run(make_router("round-robin"))
    assert all(len(v) == 3 for v in spread_rr.values())          # round-robin scatters every client
    assert all(len(v) == 1 for v in spread_d2.values())          # D²LPM keeps each document on one replica
    assert sum(r.cached_tokens for r in d2.merged.requests) > sum(r.cached_tokens for r in rr.merged.requests)
