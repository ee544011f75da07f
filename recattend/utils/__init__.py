"""Small utilities shared by the tasks: config instantiation, run-directory checks, checkpoints.

The config resolvers of :mod:`recattend.utils.hydra` are registered by whatever composes the
configs (the entry points through :mod:`recattend.utils.cli`, ``make check-data``, the benchmark),
so that importing the model needs neither Hydra nor OmegaConf.
"""
