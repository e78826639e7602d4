"""servegym/Serve-v0: API conformance, determinism, action validation, reward bookkeeping, training."""

from __future__ import annotations

import warnings

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the env ids)
from envs.env_features import CLIENT_FEATURES, REQUEST_FEATURES, SYSTEM_FEATURES
from envs.serve_env import ServeEnv


def _rollout(env: ServeEnv, seed: int, action_seed: int, max_steps: int = 10_000):
    rng = np.random.default_rng(action_seed)
    obs, info = env.reset(seed=seed)
    trace = [obs]
    rewards = []
    for _ in range(max_steps):
        if env.action_mode == "pick":
            a = int(rng.choice(np.flatnonzero(env.action_masks())))
        else:
            a = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
        obs, r, term, trunc, info = env.step(a)
        trace.append(obs)
        rewards.append(r)
        if term or trunc:
            break
    return trace, rewards, info


@pytest.mark.parametrize("mode", ["pick", "score", "weights"])
def test_gymnasium_and_sb3_checkers_pass_without_warnings(mode):
    from gymnasium.utils.env_checker import check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_env(gym.make("servegym/Serve-v0", action_mode=mode, num_requests=60).unwrapped)
        sb3_check_env(ServeEnv(action_mode=mode, num_requests=60), warn=True)


def test_spaces_have_the_documented_shapes():
    env = ServeEnv(top_k=8, max_clients=4)
    sp = env.observation_space
    assert sp["candidates"].shape == (8 * len(REQUEST_FEATURES),)
    assert sp["clients"].shape == (4 * len(CLIENT_FEATURES),)
    assert sp["system"].shape == (len(SYSTEM_FEATURES),)
    assert sp["action_mask"].shape == (8,)
    assert env.action_space == gym.spaces.Discrete(8)
    assert ServeEnv(action_mode="weights").action_space.shape == (len(REQUEST_FEATURES),)


@pytest.mark.parametrize("mode", ["pick", "score"])
def test_two_copies_with_the_same_seed_roll_out_identically(mode):
    a = _rollout(ServeEnv(action_mode=mode, num_requests=120), seed=7, action_seed=3)
    b = _rollout(ServeEnv(action_mode=mode, num_requests=120), seed=7, action_seed=3)
    assert len(a[0]) == len(b[0])
    for oa, ob in zip(a[0], b[0]):
        for k in oa:
            np.testing.assert_array_equal(oa[k], ob[k])
    assert a[1] == b[1]
    c = _rollout(ServeEnv(action_mode=mode, num_requests=120), seed=8, action_seed=3)
    assert a[1] != c[1]


def test_masks_match_the_candidate_rows():
    env = ServeEnv(workload="azure-conv", num_requests=200, rate=20.0)
    obs, info = env.reset(seed=0)
    for _ in range(50):
        mask = env.action_masks()
        assert mask.sum() == info["num_candidates"] >= 1
        np.testing.assert_array_equal(obs["action_mask"], mask.astype(np.float32))
        rows = obs["candidates"].reshape(env.top_k, len(REQUEST_FEATURES))
        np.testing.assert_array_equal(rows[:, 0], mask.astype(np.float32))  # the "valid" column
        obs, r, term, trunc, info = env.step(int(np.flatnonzero(mask)[-1]))
        if term:
            break


@pytest.mark.parametrize("bad", [float("nan"), 1.5, -1.01])
def test_invalid_score_actions_are_rejected(bad):
    env = ServeEnv(action_mode="score")
    env.reset(seed=0)
    a = np.zeros(env.top_k, np.float32)
    a[0] = bad
    with pytest.raises(ValueError, match="action"):
        env.step(a)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3, np.float32))


@pytest.mark.parametrize("bad", [-1, 16, 2.5, "x"])
def test_invalid_pick_actions_are_rejected(bad):
    env = ServeEnv(action_mode="pick", top_k=16)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(bad)


def test_bad_arguments_name_the_value():
    with pytest.raises(ValueError, match="action_mode 'x'"):
        ServeEnv(action_mode="x")
    with pytest.raises(ValueError, match="reward 'speed'"):
        ServeEnv(reward="speed")
    with pytest.raises(ValueError, match="num_requests 5000 exceeds the 1500"):
        ServeEnv(workload="arena-27", num_requests=5000)
    with pytest.raises(KeyError, match="unknown workload 'nope'"):
        ServeEnv(workload="nope")


def test_latency_reward_sums_to_minus_total_latency():
    env = ServeEnv(workload="azure-conv", num_requests=150, rate=12.0, reward="latency", reward_scale=1.0)
    _, rewards, info = _rollout(env, seed=1, action_seed=0)
    recs = env.engine.records
    total = sum(r.finish_time - r.arrival_time for r in recs)
    assert all(r.finished for r in recs)
    assert sum(rewards) == pytest.approx(-total, rel=1e-9)
    assert "episode_metrics" in info and info["episode_metrics"]["num_finished"] == 150


def test_throughput_reward_counts_output_tokens():
    env = ServeEnv(workload="arena-27", num_requests=80, reward="throughput", reward_scale=1.0)
    _, rewards, _ = _rollout(env, seed=2, action_seed=0)
    assert sum(rewards) == sum(r.output_len for r in env.engine.records)


def test_slo_reward_scores_each_request_once():
    env = ServeEnv(workload="arena-27", num_requests=80, reward="slo", slo_ttft_s=0.05, slo_tpot_s=1.0)
    _, rewards, info = _rollout(env, seed=3, action_seed=0)
    recs = env.engine.records
    hits = sum(1 for r in recs if r.first_token_time - r.arrival_time <= 0.05)
    assert sum(rewards) == hits - (len(recs) - hits)


def test_interval_decisions_and_truncation():
    env = ServeEnv(workload="azure-conv", num_requests=100, rate=10.0, decision="interval",
                   decision_interval=4, max_decisions=20)
    _, rewards, info = _rollout(env, seed=0, action_seed=0)
    assert len(rewards) == 20
    with pytest.raises(RuntimeError, match="after the episode ended"):
        done = ServeEnv(num_requests=10)
        done.reset(seed=0)
        while True:
            *_, term, trunc, _ = done.step(0)
            if term:
                break
        done.step(0)


def test_maskable_ppo_trains_a_few_thousand_steps():
    from sb3_contrib import MaskablePPO

    env = ServeEnv(workload="azure-conv", num_requests=100, rate=10.0)
    model = MaskablePPO("MultiInputPolicy", env, n_steps=512, batch_size=128, n_epochs=2, seed=0, verbose=0)
    model.learn(total_timesteps=2048)
    obs, _ = env.reset(seed=11)
    action, _ = model.predict(obs, action_masks=env.action_masks(), deterministic=True)
    assert env.action_masks()[int(action)]


def test_ppo_trains_in_score_mode():
    from stable_baselines3 import PPO

    env = ServeEnv(workload="azure-conv", num_requests=100, rate=10.0, action_mode="score")
    model = PPO("MultiInputPolicy", env, n_steps=256, batch_size=64, n_epochs=1, seed=0, verbose=0)
    model.learn(total_timesteps=512)


def test_client_rows_count_live_and_waiting_requests_per_slot():
    import math

    env = ServeEnv(workload="arena-27", num_requests=300, rate=25.0, max_clients=4)
    obs, _ = env.reset(seed=5)
    for _ in range(40):
        obs, *_ = env.step(int(np.flatnonzero(env.action_masks())[0]))
    rows = obs["clients"].reshape(4, -1)
    live = list(env.engine.live.values())
    for slot in range(4):
        mine = [r for r in live if r.client_id % 4 == slot]
        n_live = round(math.expm1(rows[slot, 1] * math.log1p(1024)))
        n_wait = round(math.expm1(rows[slot, 2] * math.log1p(1024)))
        assert n_live == len(mine)
        assert n_wait == sum(1 for r in mine if r.state.name == "WAITING")
    assert rows[:, 3].sum() == pytest.approx(1.0, abs=1e-5)  # service shares of all slots add up to 1
