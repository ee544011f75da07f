"""Turning composed Hydra configs into objects, and start-up checks on them."""

from __future__ import annotations

import dataclasses
import inspect
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Instantiate every entry with a ``_target_`` of a named group (callbacks, loggers)."""
    if not group:
        return []
    return [
        instantiate(node, _convert_="all") for node in group.values() if node and "_target_" in node
    ]


def instantiate_data(dataset_cfg: DictConfig, semantic: str | None = None) -> tuple[Any, Any]:
    """The DataModule that ``cfg.dataset`` describes and the evaluator its ``evaluator`` node names
    (the ``dataset/evaluator`` group: instances, kitti, cityscapes, coco), or None without one.

    The ``evaluator`` node is the dataset's choice of benchmark, not a DataModule argument: it is
    taken out before the DataModule is built.

    Args:
        dataset_cfg: ``cfg.dataset``.
        semantic: ``preprocessors.semantic_dir``, a folder of external semantic predictions that the
            evaluation reads instead of the pre-processor's maps (Cityscapes only).

    Raises:
        ValueError: ``semantic`` with a dataset other than Cityscapes.
    """
    settings = OmegaConf.to_container(dataset_cfg, resolve=True)
    evaluator = settings.pop("evaluator", None)
    if semantic is not None:
        target = get_class(settings["_target_"])
        # The DataModules that read them take a `semantic` folder (Cityscapes).
        if "semantic" not in inspect.signature(target).parameters:
            raise ValueError(
                f"preprocessors.semantic_dir={semantic}: external semantic predictions are read "
                f"for Cityscapes only (the authors' LRR input, paper Table 3), but the data is "
                f"{target.__name__}: use dataset=cityscapes (or experiment=cityscapes), or drop "
                "preprocessors.semantic_dir"
            )
        settings["semantic"] = semantic
    datamodule = instantiate(settings, _convert_="all")
    return datamodule, None if evaluator is None else instantiate(evaluator, _convert_="all")


def check_checkpointing(callbacks_cfg: DictConfig | None) -> None:
    """Refuse a checkpoint callback that monitors a metric and also saves at a step or time
    interval.

    Such a ``ModelCheckpoint`` saves between validations, where the monitored value is still the
    previous validation's: a "best" file would hold weights that were never scored. The best
    checkpoint (``callbacks.model_checkpoint``) saves after each validation instead, and the
    periodic, resumable one is ``callbacks.last_checkpoint``.

    Raises:
        ValueError: naming the callback and the setting to use instead.
    """
    for key, node in (callbacks_cfg or {}).items():
        if not node or not node.get("monitor"):
            continue
        for interval in ("every_n_train_steps", "train_time_interval"):
            if node.get(interval):
                raise ValueError(
                    f"callbacks.{key}: monitor={node.monitor} with {interval}={node[interval]} "
                    "saves between validations, crediting the weights with the previous "
                    f"validation's {node.monitor}. The best checkpoint saves after each validation "
                    "by itself; for a checkpoint every N optimizer steps set "
                    "callbacks.last_checkpoint.every_n_train_steps=N (checkpoints/last.ckpt)"
                )


def require_writable_dir(path: str | os.PathLike[str], key: str) -> Path:
    """Create ``path`` if needed and prove a file can be written there.

    Raises:
        PermissionError: naming ``key`` and the folder, before any work starts.
    """
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
            pass
    except OSError as err:
        raise PermissionError(
            f"{key}: cannot write to '{folder}' ({err.strerror or err}). Point it at a writable "
            f"folder, e.g. `python train.py hydra.run.dir=/tmp/recattend-run` or set "
            f"RECATTEND_OUTPUTS=/a/writable/folder."
        ) from err
    return folder


def check_multirun_strategy(trainer_cfg: DictConfig) -> None:
    """Refuse a subprocess-launching DDP strategy inside a Hydra multirun.

    Lightning's ``ddp`` (also what ``strategy: auto`` picks for several devices) re-executes
    ``sys.argv`` in each child rank, so inside ``-m`` every rank would relaunch the whole sweep
    (Lightning's documented behaviour). ``ddp_spawn`` (or ``ddp_fork`` on CPU) starts the ranks
    from the running job instead. Under ``hydra/launcher=slurm`` every rank is a SLURM task, so
    any strategy is safe as long as the tasks per job equal devices x nodes.
    """
    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN:
        return
    devices = trainer_cfg.get("devices", 1)
    single = devices in (1, "1") or (OmegaConf.is_list(devices) and len(devices) == 1)
    many = not single or trainer_cfg.get("num_nodes", 1) > 1
    strategy = str(trainer_cfg.get("strategy", "auto"))
    launcher = HydraConfig.get().launcher
    if "SlurmLauncher" in str(launcher.get("_target_", "")):
        # hydra/launcher=slurm: SLURM starts one task per rank and Lightning joins them.
        tasks = int(launcher.tasks_per_node) * int(launcher.nodes)
        if many and tasks != int(resolved_devices(trainer_cfg)[1]):
            raise ValueError(
                f"hydra.launcher starts {tasks} SLURM tasks per job but trainer.devices x "
                f"trainer.num_nodes asks for {resolved_devices(trainer_cfg)[1]} processes: keep "
                "hydra.launcher.tasks_per_node=${trainer.devices} and "
                "hydra.launcher.nodes=${trainer.num_nodes} (conf/hydra/launcher/slurm.yaml)"
            )
        return
    if many and not strategy.startswith(("ddp_spawn", "ddp_fork", "ddp_notebook")):
        raise ValueError(
            f"trainer.strategy={strategy} with trainer.devices={devices} inside a multirun (-m) "
            "would relaunch the whole sweep from every rank. Use trainer.strategy=ddp_spawn (or "
            "ddp_fork on CPU), or a single device."
        )


# Precisions the segmenter trains correctly with. Pure half precision ("16-true", "bf16-true")
# is refused: the Gaussian filterbank evaluates exp(-(a - mu)^2 / 2 var) over whole image rows
# (squared distances up to ~5e4 px^2 at 224 px) and the soft IoUs sum over H x W pixels, both
# beyond a 8-bit (bf16) or 11-bit (fp16) mantissa; mixed precision keeps weights, reductions and
# the losses in float32.
PRECISIONS = ("32-true", "32", "64-true", "64", "bf16-mixed", "16-mixed")


def resolved_devices(trainer_cfg: DictConfig) -> tuple[str, int]:
    """The accelerator (``cpu`` or ``gpu``) and the world size (devices x nodes) the trainer
    settings resolve to, as Lightning would pick them (``auto`` -> gpu when CUDA is available)."""
    import torch

    accelerator = str(trainer_cfg.get("accelerator", "auto"))
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    accelerator = "gpu" if accelerator == "cuda" else accelerator
    available = torch.cuda.device_count() if accelerator == "gpu" else 1
    devices = trainer_cfg.get("devices", 1)
    if OmegaConf.is_list(devices) or isinstance(devices, list | tuple):
        count = len(devices)
    elif str(devices).strip() in ("auto", "-1"):
        count = available
    elif "," in str(devices):  # "0,1": device indices
        count = len([d for d in str(devices).split(",") if d.strip()])
    else:
        count = int(devices)
    return accelerator, count * int(trainer_cfg.get("num_nodes", 1) or 1)


def trainer_settings(trainer_cfg: DictConfig) -> dict[str, Any]:
    """Checked Trainer arguments that need deciding before instantiation.

    * ``sync_batchnorm: auto`` becomes true with more than one CUDA device: the per-timestep
      BatchNorm statistics are then those of the global batch (the authors trained on one GPU
      with the whole batch). PyTorch's SyncBatchNorm has no CPU (gloo) implementation, so an
      explicit ``true`` with several CPU processes is an error.
    * ``precision`` must be one of :data:`PRECISIONS`.
    * ``max_steps`` and ``max_epochs`` must be positive, or -1 (no limit).

    Raises:
        ValueError: naming the setting and what to use instead.
    """
    for key in ("max_steps", "max_epochs"):
        value = trainer_cfg.get(key)
        count = isinstance(value, int) and not isinstance(value, bool)
        if value is not None and (not count or value == 0 or value < -1):
            raise ValueError(
                f"trainer.{key}={value!r}: give a positive number of "
                f"{key.removeprefix('max_')}, or -1 for no limit"
                + (" (0 would train nothing and save nothing)" if value == 0 else "")
            )
    accelerator, world = resolved_devices(trainer_cfg)
    precision = str(trainer_cfg.get("precision", "32-true"))
    if precision not in PRECISIONS:
        raise ValueError(
            f"trainer.precision={precision} is not supported: pure half precision breaks the "
            "Gaussian filterbank (squared pixel distances in exp) and the soft IoU sums over "
            f"whole images. Use one of {list(PRECISIONS)}, e.g. trainer.precision=bf16-mixed"
        )
    sync = trainer_cfg.get("sync_batchnorm", "auto")
    if sync == "auto":
        sync = accelerator == "gpu" and world > 1
    elif sync and accelerator != "gpu" and world > 1:
        raise ValueError(
            "trainer.sync_batchnorm=true needs CUDA devices: PyTorch's SyncBatchNorm has no CPU "
            "implementation. Use trainer.sync_batchnorm=false (each process normalises with its "
            "own batch) or trainer.sync_batchnorm=auto"
        )
    return {"sync_batchnorm": bool(sync)}


def process_settings(
    cfg: DictConfig, accelerator: str, steps: int | None, compiled: bool, training: bool
) -> dict[str, Any]:
    """The arguments of :func:`recattend.ops.configure` for a run.

    Args:
        cfg: the composed config (its ``cpu_fast_path``, default true).
        accelerator: what the run computes on (``cpu``, ``gpu``, ...): a GPU run never builds
            the CPU kernels.
        steps: the segmenter's T, or None when the run's module is not the segmenter (the
            pre-processor does not use the fast path).
        compiled: ``torch.compile`` is on: Dynamo's recompile limit is raised for T steps.
        training: backward passes will run (else no backward threads are started).
    """
    fast_path = bool(cfg.get("cpu_fast_path", True)) and accelerator == "cpu" and steps is not None
    return {
        "fast_path": fast_path,
        "parallel_backward": training,
        "compile_steps": steps if compiled and steps is not None else 0,
    }


def checked_seed(value: Any) -> int | None:
    """The run's ``seed``: an integer, or None (unseeded).

    Raises:
        ValueError: anything else, e.g. ``seed=abc``.
    """
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    raise ValueError(f"seed={value!r} must be an integer (e.g. seed=0) or null for an unseeded run")


def checked_choice(key: str, value: Any, choices: Sequence[str]) -> str:
    """``value`` of the root config key ``key`` when it is one of ``choices``.

    Raises:
        ValueError: any other value, naming the key and the choices.
    """
    if value in choices:
        return value
    options = " | ".join(choices)
    raise ValueError(f"{key}={value!r} must be one of {options}, e.g. {key}={choices[0]}")


def instantiate_trainer(trainer_cfg: DictConfig, **kwargs: Any) -> Any:
    """``lightning.Trainer`` from ``cfg.trainer`` after :func:`trainer_settings`."""
    return instantiate(trainer_cfg, **trainer_settings(trainer_cfg), **kwargs)


def postprocess_overrides(node: DictConfig | None, saved: dict[str, Any]) -> dict[str, Any]:
    """The module arguments that a ``postprocess`` node of ``eval.py`` or ``predict.py``
    changes: ``{"postprocess": settings}``, its non-null keys over the checkpoint's own
    post-processing (so ``postprocess.blur=false`` keeps e.g. KITTI's dilation); ``{}`` when
    every key is null.

    Args:
        node: the root config's ``postprocess`` (null values: keep the checkpoint's).
        saved: the checkpoint's hyper-parameters.

    Raises:
        ValueError: a key that is not a post-processing setting, or an invalid value (the
            message names it).
    """
    from recattend.postprocess import PostProcess  # torch: only when a checkpoint is used

    if node is None:
        return {}
    values = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    if not isinstance(values, dict):
        raise ValueError(f"postprocess={values!r}: give settings, e.g. postprocess.blur=false")
    changed = {k: v for k, v in values.items() if v is not None}
    if not changed:
        return {}
    settings = PostProcess().replace(saved.get("postprocess")).replace(changed)
    return {"postprocess": dataclasses.asdict(settings)}
