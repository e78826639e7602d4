"""Workloads, the serving engine, metrics and the Gymnasium environment.

Importing ``envs`` registers the Gymnasium ids (``servegym/Serve-v0``) when gymnasium
is installed.
"""
