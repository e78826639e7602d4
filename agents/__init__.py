"""Learned policies: PPO agents (stable-baselines3) and the learning-to-rank length predictor."""
