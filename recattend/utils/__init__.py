"""Small utilities shared by the tasks: config instantiation, run-directory checks, checkpoints.

Importing the package registers the config resolvers of :mod:`recattend.utils.hydra`.
"""

import recattend.utils.hydra  # noqa: F401  (registers ${sweep_group:...} and ${sweep_job_name:})
