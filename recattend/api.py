"""The Python API: segment images from a notebook or a script, without Hydra.

    >>> import recattend
    >>> seg = recattend.Segmenter.load("leaves")          # shipped weights, a .ckpt or an export
    >>> result = seg("plant.png")                         # a path, numpy array, PIL image or tensor
    >>> result.count, result.labels.shape, result.scores
    >>> results = seg.predict(["a.png", "b.jpg"], batch_size=8)

Every image goes the way ``predict.py`` sends it (which uses this class): read as a viewer shows
it (:func:`recattend.data.images.image_array`: every PIL mode by its real range, EXIF orientation
applied), resized to the network's input, segmented, and post-processed back at its own size by
the checkpoint's :class:`~recattend.postprocess.PostProcess` (the one post-processing of
validation, test and ``eval.py``).
"""

from __future__ import annotations

import dataclasses
import json
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from recattend import ops, pretrained
from recattend.data.images import image_array, network_input, read_image
from recattend.lit import SegmenterModule, load_module
from recattend.postprocess import Instances, PostProcess, image_outputs

PRECISIONS = ("32", "bf16")
MAX_PIXELS = 89_478_485  # PIL's decompression-bomb limit, as predict.py's default


@dataclasses.dataclass(frozen=True)
class Segmentation:
    """The instances of one image, at its own size (H, W).

    Attributes:
        labels: (H, W) int64, 0 = background, instances 1..K in the order the model found them.
        masks: (K, H, W) bool, instance k's pixels at index k - 1.
        scores: (K,) float32, instance k's score s_t in [0, 1].
    """

    labels: np.ndarray
    masks: np.ndarray
    scores: np.ndarray

    @property
    def count(self) -> int:
        """K, the number of instances."""
        return len(self.scores)

    @classmethod
    def of(cls, instances: Instances) -> Segmentation:
        """The numpy result of one image's post-processed :class:`Instances`."""
        labels = instances.labels.cpu().numpy()
        ids = np.arange(1, len(instances.scores) + 1)[:, None, None]
        scores = instances.scores.detach().float().cpu().numpy()
        return cls(labels=labels, masks=labels[None] == ids, scores=scores)


class ExportedModule:
    """An exported graph (:mod:`recattend.export`) with the part of a
    :class:`~recattend.lit.SegmenterModule`'s face that :class:`Segmenter` uses: ``net``
    (``image_size``, ``steps``), ``postprocess``, ``device``, and calling it on a (B, 3, h, w)
    batch gives the outputs by name.

    Args:
        run: the graph: a (B, 3, h, w) float32 batch -> its outputs, in ``info["outputs"]``'s
            order.
        info: the file's metadata (:func:`recattend.export.metadata`).
        device: where ``run`` computes.
    """

    def __init__(
        self, run: Callable[[Tensor], Sequence[Tensor]], info: Mapping[str, Any], device: Any
    ) -> None:
        self._run, self.outputs = run, list(info["outputs"])
        self.net = SimpleNamespace(image_size=tuple(info["image_size"]), steps=info["steps"])
        self.postprocess = PostProcess().replace(info["postprocess"])
        self.device = torch.device(device)

    def eval(self) -> ExportedModule:
        return self

    def __call__(self, x: Tensor) -> dict[str, Tensor]:
        return dict(zip(self.outputs, self._run(x), strict=True))


def exported_metadata(path: Path) -> dict[str, Any] | None:
    """The metadata of an exported file (TorchScript or ONNX, :mod:`recattend.export`), or None
    for any other file (a checkpoint)."""
    if path.suffix == ".onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        found = {p.key: p.value for p in model.metadata_props}.get("recattend")
        return json.loads(found) if found else None
    if not zipfile.is_zipfile(path):
        return None
    with zipfile.ZipFile(path) as archive:
        name = next((n for n in archive.namelist() if n.endswith("/extra/recattend.json")), None)
        return json.loads(archive.read(name)) if name else None


def load_exported(path: Path, device: torch.device) -> ExportedModule | None:
    """The :class:`ExportedModule` of an exported file, or None for a checkpoint.

    Raises:
        ModuleNotFoundError: an ONNX file without onnxruntime (``pip install recattend[onnx]``).
    """
    info = exported_metadata(path)
    if info is None:
        return None
    if path.suffix != ".onnx":
        graph = torch.jit.load(str(path), map_location=device)
        return ExportedModule(graph, info, device)
    try:
        import onnxruntime
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError(
            f"{path} is an ONNX file: running it needs onnxruntime (pip install onnxruntime, or "
            "recattend[onnx]); the TorchScript file of the same export needs only PyTorch"
        ) from err
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])

    def run(x: Tensor) -> list[Tensor]:
        outputs = session.run(None, {"image": x.detach().cpu().float().numpy()})
        return [torch.from_numpy(value) for value in outputs]

    return ExportedModule(run, info, "cpu")


class Segmenter:
    """A trained segmenter ready for images (module docstring).

    Args:
        module: the :class:`~recattend.lit.SegmenterModule` on its device, or an exported
            graph (:class:`ExportedModule`).
        precision: ``"32"`` or ``"bf16"`` (bfloat16 autocast on the module's device).

    Use :meth:`load` to build one from shipped weights or a checkpoint.
    """

    def __init__(self, module: SegmenterModule, precision: str = "32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision={precision!r}: use one of {list(PRECISIONS)}")
        self.module, self.precision = module.eval(), precision

    @classmethod
    def load(
        cls,
        source: str | Path = "leaves",
        device: str | torch.device = "auto",
        precision: str = "32",
        postprocess: Mapping[str, Any] | None = None,
        cpu_fast_path: bool = True,
        key: str = "source",
    ) -> Segmenter:
        """The segmenter of shipped weights (by name: ``"leaves"``), of a segmenter checkpoint
        (``.ckpt`` of a ``module=segmenter`` run, or a shipped ``.pt``) or of an exported file
        (:mod:`recattend.export`: TorchScript, or ONNX run by onnxruntime on the CPU).

        Args:
            device: ``"auto"`` (the first GPU if there is one, else the CPU), ``"cpu"``,
                ``"cuda"``, ``"cuda:1"``, ...
            precision: ``"32"`` or ``"bf16"``.
            postprocess: post-processing settings over the checkpoint's, e.g.
                ``{"threshold": 0.5}`` (:meth:`PostProcess.replace
                <recattend.postprocess.PostProcess.replace>`).
            cpu_fast_path: on the CPU, recattend's C++ kernels (built at the first use, about a
                minute, then cached); False: plain PyTorch. Like ``predict.py``, this makes the
                process-wide settings of :func:`recattend.ops.configure` for inference.
            key: the setting that named ``source``, for error messages.

        Raises:
            FileNotFoundError: neither shipped weights of that name nor a file.
            ValueError: not a segmenter checkpoint, or an unknown post-processing setting.
        """
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        device = torch.device(device)
        path = pretrained.checkpoint_file(str(source), key)
        exported = load_exported(path, device)
        if exported is not None:
            if postprocess:
                exported.postprocess = exported.postprocess.replace(postprocess)
            return cls(exported, precision)
        module = load_module(
            SegmenterModule, path, map_location=device, key=key,
            hint=f"{key} must name a segmenter checkpoint (a module=segmenter run)",
        )  # fmt: skip
        if postprocess:
            module.postprocess = module.postprocess.replace(postprocess)
        compiled = module.net.steps if module.hparams.compile else 0
        fast = cpu_fast_path and device.type == "cpu"
        ops.configure(fast_path=fast, parallel_backward=False, compile_steps=compiled)
        return cls(module, precision)

    @property
    def device(self) -> torch.device:
        """Where the network runs."""
        return self.module.device

    @property
    def image_size(self) -> tuple[int, int]:
        """The network's input (H, W): every image is resized to it and the masks back."""
        return self.module.net.image_size

    def network_input(self, image: Any) -> tuple[np.ndarray, Tensor]:
        """An image as the network takes it.

        Args:
            image: a path; a numpy array (H, W, 3) RGB or (H, W) grey, ``uint8`` or float in
                [0, 1]; a PIL image (any mode); a tensor (3, H, W) or (H, W), ``uint8`` or float
                in [0, 1].

        Returns:
            The image as (H, W, 3) RGB at its own size (``uint8`` or ``float32`` in [0, 1]),
            and the (3, h, w) float32 network input on :attr:`device`.

        Raises:
            ValueError: an array or tensor of another shape or value range (the message says
                which).
        """
        rgb = _rgb(image)
        x = torch.from_numpy(network_input(rgb, self.image_size)).permute(2, 0, 1)
        return rgb, x.to(self.device)

    def instances(self, x: Tensor, sizes: Sequence[tuple[int, int]]) -> list[Instances]:
        """The post-processed instances of a batch of network inputs.

        Args:
            x: (B, 3, h, w) float32 network inputs (:meth:`network_input`).
            sizes: each image's own (H, W): its labels come at that size.
        """
        bf16 = self.precision == "bf16"
        autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bf16)
        with torch.inference_mode(), autocast:
            out = self.module(x)
            return [
                self.module.postprocess(image_outputs(out, i), size)[0]
                for i, size in enumerate(sizes)
            ]

    def __call__(self, image: Any) -> Segmentation:
        """One image's :class:`Segmentation` (:meth:`network_input` lists the inputs taken)."""
        return self.predict([image])[0]

    def predict(self, images: Iterable[Any], batch_size: int = 8) -> list[Segmentation]:
        """The :class:`Segmentation` of every image, ``batch_size`` at a time through the
        network; the images may differ in size and kind."""
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size}: use 1 or more")
        results = []
        for chunk in _chunks(images, batch_size):
            prepared = [self.network_input(image) for image in chunk]
            x = torch.stack([x for _, x in prepared])
            sizes = [rgb.shape[:2] for rgb, _ in prepared]
            results += [Segmentation.of(i) for i in self.instances(x, sizes)]
        return results


def _rgb(image: Any) -> np.ndarray:
    """(H, W, 3) RGB of any input of :meth:`Segmenter.network_input`."""
    if isinstance(image, str | Path):
        return read_image(Path(image), MAX_PIXELS)
    if isinstance(image, Image.Image):
        return image_array(image)
    if isinstance(image, Tensor):
        if image.dim() == 3:
            if image.shape[0] not in (1, 3):
                raise ValueError(
                    f"a tensor image of shape {tuple(image.shape)}: give (3, H, W) or (H, W), "
                    "channels first"
                )
            image = image.permute(1, 2, 0)
        image = image.detach().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise ValueError(
            f"an image of type {type(image).__name__}: give a path, a numpy array, a PIL image "
            "or a tensor"
        )
    if image.ndim == 3 and image.shape[2] == 1 or image.ndim == 2:
        image = np.repeat(image.reshape(*image.shape[:2], 1), 3, axis=2)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(
            f"an image array of shape {image.shape}: give (H, W, 3) RGB or (H, W) grey"
        )
    if image.dtype == np.uint8:
        return image
    image = image.astype(np.float32)
    if image.size and not (np.isfinite(image).all() and 0 <= image.min() <= image.max() <= 1):
        raise ValueError(
            f"an image of {image.dtype} values in {image.min()}..{image.max()}: float images "
            "must lie in [0, 1] (uint8 ones in 0..255)"
        )
    return image


def _chunks(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
