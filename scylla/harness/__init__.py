"""Harness: one job per config (pipeline), Hydra sweeps, the results store, tracking, demo and study."""
