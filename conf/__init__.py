"""Hydra configs of recattend, importable as ``pkg://recattend.conf`` when installed."""
