"""Exported models: the segmenter's inference graph as TorchScript and ONNX files, which run
without Lightning, Hydra or recattend's training code.

    python -m recattend.export leaves                      # shipped weights, or a run's .ckpt
    python -m recattend.export <run>/checkpoints/best.ckpt --out exported/ --opset 17

writes ``<out>/<name>.torchscript.pt`` and ``<out>/<name>.onnx`` (ONNX opset :data:`OPSET` by
default). Both hold the same graph, :class:`InferenceGraph`: ``image`` (B, 3, H, W) float32 in
[0, 1] at the network's input size (any batch size) -> ``masks`` (B, T, H, W) and ``scores``
(B, T), then with a pre-processor ``foreground`` (B, H, W) and with a semantic one ``semantic``
(B, K + 1, H, W): all T steps, always (a fixed T). Each file also records the network's input
size, T, its outputs' names and the checkpoint's post-processing settings (TorchScript: the
extra file ``recattend.json``; ONNX: the metadata entry ``recattend``), so that
:meth:`recattend.Segmenter.load <recattend.api.Segmenter.load>` and ``predict.py`` run an
exported file as they run a checkpoint (ONNX through onnxruntime, the ``onnx`` extra).

What is not exported, and why:

* **The post-processing** (:class:`~recattend.postprocess.PostProcess`): the number of
  instances, and so the shape of its results, depends on the data, and its steps (unique ids,
  the bilateral filter's loops, resizing to each image's size) are written for PyTorch's eager
  mode. It runs on the graph's outputs in Python, as for a checkpoint.
* **The early stop** of ``stop_rule=first_below``: the loop over steps would end on a
  data-dependent condition. The graph runs all T steps; the post-processing's stop rule zeroes
  every output from an image's first low score on, which gives the same labels.
* **Training** (teacher forcing, the losses' Hungarian matching in SciPy) and **the CPU fast
  path's C++ kernels** (not standard operators): the export traces PyTorch's own operators.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from recattend import __version__, ops
from recattend.models import SegmenterNetwork

OPSET = 17  # the ONNX opset of the exported files (onnxruntime >= 1.12 runs it)
METADATA = "recattend.json"  # the TorchScript extra file, and (without .json) the ONNX key
SUFFIXES = {"torchscript": ".torchscript.pt", "onnx": ".onnx"}


class InferenceGraph(nn.Module):
    """The network's inference with a fixed T, as exported (module docstring).

    Args:
        net: the trained network, in evaluation mode.
    """

    def __init__(self, net: SegmenterNetwork) -> None:
        super().__init__()
        self.net = net.eval()
        self.outputs = ["masks", "scores"]
        if net.preprocessor is not None:
            self.outputs.append("foreground")
            if net.preprocessor.num_classes:
                self.outputs.append("semantic")

    def forward(self, image: Tensor) -> tuple[Tensor, ...]:
        out = self.net.predict(image, threshold=0.0)  # 0: never stops, every step runs
        return tuple(out[name] for name in self.outputs)


def metadata(module: Any, outputs: Sequence[str]) -> dict[str, Any]:
    """What an exported file records beside its graph: the input size, T, the outputs' names,
    the post-processing settings and the recattend version that wrote it."""
    return {
        "image_size": list(module.net.image_size),
        "steps": module.net.steps,
        "outputs": list(outputs),
        "postprocess": dataclasses.asdict(module.postprocess),
        "recattend": __version__,
    }


def export(
    source: str | Path,
    out: str | Path,
    formats: Sequence[str] = ("torchscript", "onnx"),
    opset: int = OPSET,
) -> dict[str, Path]:
    """Export the segmenter of ``source`` (shipped weights by name, or a checkpoint) into the
    folder ``out``; returns the file written per format.

    Raises:
        ValueError: an unknown format.
        ModuleNotFoundError: ``onnx`` without PyTorch's ONNX exporter's dependencies.
    """
    from recattend.api import Segmenter  # the API imports this module

    unknown = sorted(set(formats) - set(SUFFIXES))
    if unknown:
        raise ValueError(f"formats {unknown}: use {list(SUFFIXES)}")
    # PyTorch's operators only: the fast path's kernels are not standard operators.
    segmenter = Segmenter.load(source, device="cpu", cpu_fast_path=False)
    ops.configure(fast_path=False)
    graph = InferenceGraph(segmenter.module.net)
    example = torch.rand(2, 3, *segmenter.image_size)
    info = metadata(segmenter.module, graph.outputs)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(str(source)).name.removesuffix(".ckpt").removesuffix(".pt")
    written = {}
    with torch.no_grad():
        if "torchscript" in formats:
            path = folder / f"{stem}{SUFFIXES['torchscript']}"
            traced = torch.jit.trace(graph, (example,), check_trace=False)
            torch.jit.save(traced, str(path), _extra_files={METADATA: json.dumps(info)})
            written["torchscript"] = path
        if "onnx" in formats:
            path = folder / f"{stem}{SUFFIXES['onnx']}"
            batch = {0: "batch"}
            torch.onnx.export(
                graph, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=["image"], output_names=graph.outputs,
                dynamic_axes={"image": batch, **{name: batch for name in graph.outputs}},
            )  # fmt: skip
            _add_onnx_metadata(path, info)
            written["onnx"] = path
    return written


def _add_onnx_metadata(path: Path, info: dict[str, Any]) -> None:
    """Record ``info`` in the ONNX file's metadata (key ``recattend``)."""
    import onnx

    model = onnx.load(str(path))
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA.removesuffix(".json"), json.dumps(info)
    onnx.save(model, str(path))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m recattend.export", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("source", help="shipped weights by name (leaves) or a segmenter .ckpt")
    parser.add_argument("--out", type=Path, default=Path("exported"), help="output folder")
    parser.add_argument(
        "--formats", nargs="+", default=list(SUFFIXES), choices=list(SUFFIXES),
        help="what to write (default: both)",
    )  # fmt: skip
    parser.add_argument("--opset", type=int, default=OPSET, help=f"ONNX opset (default {OPSET})")
    args = parser.parse_args(argv)
    try:
        written = export(args.source, args.out, args.formats, args.opset)
    except (FileNotFoundError, ValueError, ModuleNotFoundError) as err:
        sys.exit(f"error: {err}")
    for kind, path in written.items():
        print(f"{kind}: {path}")


if __name__ == "__main__":
    main()
