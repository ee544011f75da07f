"""Explicit process-group teardown at the end of every fit/validate/test.

With gloo on CPU, gloo threads still alive at interpreter exit can abort a multi-process run
with SIGABRT; spawned workers leave through ``os._exit``, so Lightning's own atexit hook cannot
help there. A barrier then
``destroy_process_group`` in ``teardown`` ends them cleanly; Lightning re-creates the group for a
following ``trainer.test``.
"""

from __future__ import annotations

import lightning as L
import torch.distributed as dist


class ProcessGroupTeardown(L.Callback):
    """Destroys the default process group when a Trainer stage ends (always enabled)."""

    def teardown(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
