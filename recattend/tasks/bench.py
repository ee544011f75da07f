"""Speed and memory benchmark of the segmenter (``make bench``, ``make bench-gpu``; not a test).

The process plan, the model, DDP and loading measurements, and the CPU and CUDA variants share
the timing and reporting code.

For each configuration -- the paper's CVPPP setting (224x224, T = 21, 48x48 patches, batch 5) and
the synthetic default (128x128, T = 11, batch 8) -- fresh processes measure the figures below: the
defaults in ``--repeats`` processes (3) spread over the configuration's run, first, between the
variants and last (the machine's speed drifts over minutes), each figure their median (all runs'
training and inference figures also under ``*_runs``), and each variant in one process:

* ``train_images_per_s``: full training steps (forward, joint loss, backward, gradient clipping,
  the module's own optimiser step) with the module's defaults, timed after two untimed steps
  (:data:`TRAIN_WARMUP`, which allocate the process's working memory); the variants
  (:data:`VARIANTS`, keys ending in their suffix, with their peak memory): ``_whole_steps``
  recomputing whole steps (``module.recompute=true``), ``_full_resolution`` recomputing
  the box CNN's full-resolution layers (``full_resolution``), ``_one_backward`` without the
  parallel backward (``recattend.ops.configure(parallel_backward=False)``), ``_bf16`` under
  bfloat16 autocast (``trainer.precision=bf16-mixed``);
* ``infer_images_per_s``: :meth:`RecurrentSegmenter.predict` running all T steps (no early stop:
  the worst case);
* ``peak_train_memory_gib``: the process's peak resident memory after the training steps
  (includes the interpreter and torch, about 0.4 GiB);
* ``matching_loss_share``: the share of training-step time spent in the losses (soft IoUs,
  Hungarian matching, score loss): the module's ``recattend.losses`` profiler range
  (:data:`recattend.lit.segmenter.LOSSES_RANGE`) over the wall time of :data:`PROFILED_STEPS`
  further training steps run under :mod:`torch.profiler`.

Data loading: for each real dataset, a fixture in its official layout at the real image size
(:mod:`recattend.data.fixtures`) is read through its DataModule with the dataset config's
workers, resizing and augmentation; ``loading`` gives training images/s per dataset.

DDP scaling (``--ddp``, also part of ``make bench``): the synthetic default trained by a Lightning
Trainer on 1 and on 2 CPU processes (``ddp_spawn``, gloo; the per-process batch stays 8, so 2
processes train a global batch of 16); ``ddp`` gives training images/s per world size, timed
over full-stage steps after a warm-up.

Figures are printed and written to ``outputs/bench/latest.json``. Usage:
``python -m recattend.tasks.bench [--steps N] [--repeats N] [--out PATH] [--skip-model]
[--skip-loading] [--skip-ddp] [--device cpu|cuda]``.

GPU mode (``--device cuda``, ``make bench-gpu``; ``make bench`` stays the CPU run): the same
model figures with the network, the batch and the optimiser on the first CUDA device, and the CPU
fast path off (it only ever applies on the CPU). Timings are taken between
``torch.cuda.synchronize()`` calls, so they cover the GPU's work and not only its launch;
``peak_train_memory_gib`` is then ``torch.cuda.max_memory_allocated()`` over the training steps
(the tensors PyTorch allocated on the GPU, not the process's resident memory), and ``gpu`` names
the device. The variants are ``_whole_steps``, ``_full_resolution`` and ``_bf16`` (bfloat16
autocast on the GPU); ``_one_backward`` is left out (the parallel backward only runs on the CPU),
and so are the DDP and loading figures (CPU processes and data loading: ``make bench``). The
matching's share includes its copy to the CPU, where SciPy's Hungarian algorithm runs by design.
The figures go to ``outputs/bench/latest-cuda.json`` unless ``--out`` says otherwise. Without a
CUDA device, ``--device cuda`` stops at once with an error saying so.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L

if TYPE_CHECKING:
    from recattend.lit import SegmenterModule

CONFIGS: dict[str, dict[str, Any]] = {
    "cvppp": {"resolution": [224, 224], "max_instances": 20, "batch_size": 5},
    "synthetic": {"resolution": [128, 128], "max_instances": 10, "batch_size": 8},
}
# Real image sizes (H, W) of the loading benchmark's fixtures.
LOADING_SIZES = {
    "cvppp": (530, 500),
    "kitti": (375, 1242),
    "cityscapes": (1024, 2048),
    "coco": (480, 640),
}
TRAIN_WARMUP = 2  # untimed training steps before the timed ones (see measure)
PROFILED_STEPS = 3  # training steps profiled after the timed ones, for the losses' share
# Training variants besides the defaults: key suffix -> arguments of measure (SegmenterModule
# arguments, bf16: autocast, parallel_backward: recattend.ops.configure).
VARIANTS: dict[str, dict[str, Any]] = {
    "_whole_steps": {"recompute": True},
    "_full_resolution": {"recompute": "full_resolution"},
    "_one_backward": {"parallel_backward": False},
    "_bf16": {"bf16": True},
}
CPU_ONLY_VARIANTS = ("_one_backward",)  # the parallel backward only runs for CPU models
DEVICES = ("cpu", "cuda")
DEFAULT_OUT = {
    "cpu": Path("outputs/bench/latest.json"),
    "cuda": Path("outputs/bench/latest-cuda.json"),
}


def _segmenter(name: str, **module_args: Any) -> SegmenterModule:
    """The SegmenterModule of configuration ``name``: the full network with the authors' CVPPP
    sizes (:class:`~recattend.models.RecurrentSegmenter`'s defaults), raw pixels, ground-truth
    boxes padded by at least 20 px; ``module_args`` override the module's other defaults."""
    from recattend.lit import SegmenterModule
    from recattend.models import SegmenterNetwork

    config = CONFIGS[name]
    net = SegmenterNetwork(image_size=config["resolution"], max_instances=config["max_instances"])
    return SegmenterModule(net=net, **{"box_min_pad": 20.0, **module_args})


def measure(
    name: str,
    steps: int,
    bf16: bool = False,
    parallel_backward: bool = True,
    device: str = "cpu",
    **module_args: Any,
) -> dict[str, float]:
    """Benchmark one configuration in the current process, which it configures first
    (:func:`recattend.ops.configure` with ``parallel_backward``; the fast path off on ``cuda``);
    ``module_args`` override the SegmenterModule's defaults. ``device``: ``"cpu"`` or ``"cuda"``
    (the module docstring's GPU mode)."""
    import torch

    from recattend.data import SyntheticDataModule
    from recattend.ops import configure

    cuda = device == "cuda"
    if cuda:
        _require_cuda()
    configure(fast_path=not cuda, parallel_backward=parallel_backward)

    def synchronize() -> None:  # the GPU's queued work is part of what is timed
        if cuda:
            torch.cuda.synchronize()

    config = CONFIGS[name]
    torch.manual_seed(0)
    data = SyntheticDataModule(
        resolution=config["resolution"],
        max_instances=config["max_instances"],
        min_objects=max(2, config["max_instances"] // 2),
        max_objects=config["max_instances"],
        batch_size=config["batch_size"],
        augment=None,
    )
    batch = {
        key: value.to(device) if isinstance(value, torch.Tensor) else value
        for key, value in next(iter(data.train_dataloader())).items()
    }
    module = _segmenter(name, **module_args).to(device)
    module.log = module.log_dict = lambda *a, **k: None  # no Trainer: logging is a no-op
    optimizer = module.configure_optimizers()["optimizer"]  # on the module's device (fused Adam)

    module.train()

    def train_step() -> None:
        optimizer.zero_grad()
        with torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=bf16):
            loss = module.training_step(batch, 0)
        loss.backward()
        # As the Trainer does (SegmenterModule.configure_gradient_clipping): element-wise.
        if module.hparams.grad_clip:
            torch.nn.utils.clip_grad_value_(module.parameters(), module.hparams.grad_clip)
        optimizer.step()

    # Warm-up: the first steps allocate the process's working memory and run slower.
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(TRAIN_WARMUP):
        train_step()
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    synchronize()
    train_time = time.perf_counter() - start
    # Read before the profiled steps, whose profiler buffers would count in the process's peak.
    if cuda:  # what PyTorch allocated on the GPU, warm-up included
        peak = torch.cuda.max_memory_allocated() / 2**30
    else:  # the process's resident memory (interpreter and torch included)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    loss_share = _losses_share(train_step, synchronize)

    module.eval()
    with torch.no_grad():
        module.net.segmenter.predict(batch["image"], threshold=0.0)
        synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            module.net.segmenter.predict(batch["image"], threshold=0.0)
        synchronize()
        infer_time = time.perf_counter() - start
    images = steps * config["batch_size"]
    figures: dict[str, Any] = {
        "train_images_per_s": round(images / train_time, 2),
        "infer_images_per_s": round(images / infer_time, 2),
        "peak_train_memory_gib": round(peak, 3),
        "matching_loss_share": round(loss_share, 4),
        "torch_threads": torch.get_num_threads(),
    }
    if cuda:
        figures["gpu"] = torch.cuda.get_device_name()
    return figures


def _losses_share(train_step: Any, synchronize: Any) -> float:
    """The share of :data:`PROFILED_STEPS` training steps' wall time spent in the module's
    losses (its :data:`~recattend.lit.segmenter.LOSSES_RANGE` range of :mod:`torch.profiler`,
    synchronising the GPU's queue at its end, since the matching copies to the CPU)."""
    from torch.profiler import ProfilerActivity, profile

    from recattend.lit.segmenter import LOSSES_RANGE

    synchronize()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        start = time.perf_counter()
        for _ in range(PROFILED_STEPS):
            train_step()
        synchronize()
        total = time.perf_counter() - start
    spent = sum(e.cpu_time_total for e in profiler.key_averages() if e.key == LOSSES_RANGE)
    return spent / 1e6 / total  # microseconds -> seconds


def _require_cuda() -> None:
    """Raise a clear error where ``--device cuda`` cannot run."""
    import torch

    if not torch.cuda.is_available():
        built = torch.version.cuda
        raise RuntimeError(
            "--device cuda: no CUDA device is available (torch.cuda.is_available() is False; "
            + (
                f"torch {torch.__version__} is built for CUDA {built}, so check the driver and "
                "CUDA_VISIBLE_DEVICES"
                if built
                else f"torch {torch.__version__} is a CPU-only build: install a CUDA wheel, e.g. "
                'make install TORCH_SPEC="torch==<version> --index-url <your CUDA index>"'
            )
            + "); make bench (--device cpu) measures the CPU"
        )


def measure_loading(name: str, images: int, folder: Path) -> float:
    """Training images/s that ``dataset=<name>`` delivers from a fixture at real image sizes."""
    from hydra import compose, initialize_config_module

    import recattend.utils.hydra  # noqa: F401  (registers the configs' resolvers)
    from recattend.data import fixtures
    from recattend.utils.config import instantiate_data

    size, root = LOADING_SIZES[name], folder / name
    if name == "cvppp":
        fixtures.write_cvppp(root, list(range(1, images + 1)), size)
    elif name == "kitti":
        ids = [f"{i:06d}" for i in range(images + 2)]
        fixtures.write_kitti(root, {"train": ids[:-2], "val": ids[-2:-1], "test": ids[-1:]}, size)
    elif name == "cityscapes":
        fixtures.write_cityscapes(root, "train", {"aachen": images}, size)
        fixtures.write_cityscapes(root, "val", {"frankfurt": 1}, size)
    else:
        fixtures.write_coco(root, "train2017", images, size)
        fixtures.write_coco(root, "val2017", 1, size)
    with initialize_config_module("recattend.conf", version_base="1.3"):
        cfg = compose("train", overrides=[f"dataset={name}", f"dataset.root={root}"])
    datamodule, _ = instantiate_data(cfg.dataset)
    loader = datamodule.train_dataloader()
    for _ in loader:  # warm-up: workers start, files enter the page cache
        pass
    start, count = time.perf_counter(), 0
    for batch in loader:
        count += len(batch["image"])
    return round(count / (time.perf_counter() - start), 1)


class StepTimer(L.Callback):
    """Writes training images/s over optimizer steps warmup .. warmup + steps to ``result``
    (rank 0; DDP ranks move in lockstep)."""

    def __init__(self, result: Path, warmup: int, steps: int) -> None:
        self.result, self.warmup, self.steps = result, warmup, steps
        self.start = 0.0

    def on_train_batch_start(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.global_step == self.warmup:
            self.start = time.perf_counter()

    def on_train_end(self, trainer: L.Trainer, *args: Any) -> None:
        if trainer.is_global_zero:
            batch = trainer.datamodule.batch_size
            images = self.steps * batch * trainer.world_size
            self.result.write_text(str(images / (time.perf_counter() - self.start)))


def measure_ddp(devices: int, steps: int, warmup: int = 3) -> float:
    """Training images/s of the synthetic default on ``devices`` CPU processes (all ranks)."""
    import torch

    from recattend.callbacks import ProcessGroupTeardown
    from recattend.data import SyntheticDataModule
    from recattend.ops import configure

    configure()  # in this process (devices 1); ddp_spawn's processes take the same defaults
    config = CONFIGS["synthetic"]
    with tempfile.TemporaryDirectory() as folder:
        result = Path(folder) / "images_per_s"

        torch.manual_seed(0)
        data = SyntheticDataModule(
            resolution=config["resolution"],
            max_instances=config["max_instances"],
            batch_size=config["batch_size"],
            num_train=config["batch_size"] * devices * (warmup + steps),
            num_workers=1,
        )
        module = _segmenter("synthetic")
        trainer = L.Trainer(
            accelerator="cpu",
            devices=devices,
            strategy="ddp_spawn" if devices > 1 else "auto",
            max_steps=warmup + steps,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            callbacks=[StepTimer(result, warmup, steps), ProcessGroupTeardown()],
            default_root_dir=folder,
        )
        trainer.fit(module, datamodule=data)
        return round(float(result.read_text()), 2)


def _worker(name: str, steps: int, variant: dict[str, Any], queue: mp.Queue) -> None:
    queue.put(measure(name, steps, **variant))


def in_fresh_process(name: str, steps: int, variant: dict[str, Any]) -> dict[str, float]:
    """A fresh process per measurement gives a clean memory peak."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_worker, args=(name, steps, variant, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def _plan(variants: list[str], repeats: int) -> list[str | None]:
    """The order of a configuration's processes: the defaults (None) ``repeats`` times, first,
    last and evenly between the variants, so the machine's drift over the run reaches both.

    >>> _plan(["a", "b", "c", "d"], 3)
    [None, 'a', 'b', None, 'c', 'd', None]
    """
    if repeats < 2:
        return [None, *variants]
    bounds = [k * len(variants) // (repeats - 1) for k in range(repeats)]
    order: list[str | None] = [None]
    for start, stop in zip(bounds, bounds[1:], strict=False):
        order += [*variants[start:stop], None]
    return order


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (module docstring); ``--device cuda`` without CUDA exits with an error
    (status 2) before anything is measured."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per figure")
    parser.add_argument(
        "--repeats", type=int, default=3, help="processes measuring the defaults (median)"
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="figures file (default: outputs/bench/latest.json, with --device cuda "
        "outputs/bench/latest-cuda.json)",
    )
    parser.add_argument("--skip-model", action="store_true", help="only the loading figures")
    parser.add_argument("--skip-loading", action="store_true", help="only the model figures")
    parser.add_argument("--images", type=int, default=24, help="fixture images per dataset")
    parser.add_argument("--skip-ddp", action="store_true", help="no 1 vs 2 process figures")
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where the model figures are measured: cpu (make bench) or cuda (make bench-gpu: "
        "GPU images/s and peak GPU memory; no DDP or loading figures)",
    )
    args = parser.parse_args(argv)
    if args.device == "cuda":
        try:
            _require_cuda()
        except RuntimeError as error:
            parser.error(str(error))
        args.skip_ddp = args.skip_loading = True  # CPU measurements: make bench
    if args.out is None:
        args.out = DEFAULT_OUT[args.device]
    return args


def main(argv: list[str] | None = None) -> dict[str, dict[str, float]]:
    args = parse_args(argv)
    previous = json.loads(args.out.read_text()) if args.out.exists() else {}
    results: dict[str, Any] = {}
    variants = [v for v in VARIANTS if args.device == "cpu" or v not in CPU_ONLY_VARIANTS]
    device = {"device": args.device} if args.device != "cpu" else {}
    for name in [] if args.skip_model else CONFIGS:
        defaults, figures = [], {}
        for suffix in _plan(variants, args.repeats):
            if suffix is None:
                defaults.append(in_fresh_process(name, args.steps, device))
                continue
            variant = in_fresh_process(name, args.steps, {**VARIANTS[suffix], **device})
            for key in ("train_images_per_s", "peak_train_memory_gib"):
                figures[key + suffix] = variant[key]
        results[name] = {
            **{
                key: statistics.median(d[key] for d in defaults)
                if isinstance(defaults[0][key], int | float)
                else defaults[0][key]  # the GPU's name
                for key in defaults[0]
            },
            "train_images_per_s_runs": [d["train_images_per_s"] for d in defaults],
            "infer_images_per_s_runs": [d["infer_images_per_s"] for d in defaults],
            **figures,
        }
        print(f"{name:10s} " + "  ".join(f"{k}={v}" for k, v in results[name].items()), flush=True)
    if not args.skip_ddp:
        results["ddp"] = {
            f"train_images_per_s_{n}_process{'es' if n > 1 else ''}": measure_ddp(n, 4 * args.steps)
            for n in (1, 2)
        }
        print("ddp (synthetic) " + "  ".join(f"{k}={v}" for k, v in results["ddp"].items()))
    if not args.skip_loading:
        with tempfile.TemporaryDirectory() as folder:
            results["loading"] = {
                name: measure_loading(name, args.images, Path(folder)) for name in LOADING_SIZES
            }
        print(
            "loading (train images/s) "
            + "  ".join(f"{k}={v}" for k, v in results["loading"].items())
        )
    results = {**previous, **results}  # a partial run keeps the other figures
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {args.out}")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
