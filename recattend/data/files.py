"""What every dataset read from files shares: entries, robust reading, layout errors, the check.

A file dataset lists its samples as :class:`Entry` s (an id, the image path, the label path) and
says how to read one entry into a :class:`~recattend.data.base.RawSample`. This module does the
rest the same way for all of them:

* start-up scan: every entry's image and label headers are opened (cheap, no decoding); a missing
  label or an image/label size mismatch is a problem;
* reading on access: a file that cannot be decoded (truncated, corrupt, a decompression bomb) is a
  problem found late;
* problems are skipped with a warning that counts them (``dataset.on_bad_file=skip``, default) or
  stop the run naming the file (``fail``); a split left empty is always an error;
* a missing or wrong ``dataset.root`` is an error showing the expected layout and where to get it.
"""

from __future__ import annotations

import logging
from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from recattend.data.base import InstanceDataModule, RawSample
from recattend.data.images import image_array, to_display, transparent_fraction, upright_size

# A sample's ground truth: (N, H, W) bool masks, (N,) int classes or None, (H, W) semantic or None.
Instances = tuple[np.ndarray, np.ndarray | None, np.ndarray | None]

log = logging.getLogger(__name__)

ON_BAD_FILE = ("skip", "fail")
# Errors PIL and numpy raise on unreadable, truncated or malicious files.
READ_ERRORS = (OSError, ValueError, SyntaxError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Entry:
    """One sample on disk: ``label`` is None for unlabelled images (prediction only)."""

    id: str
    image: Path
    label: Path | None
    extra: dict[str, Any] = field(default_factory=dict, hash=False, compare=False)


class BadFileError(RuntimeError):
    """A file of the dataset cannot be used; the message names it and why."""


def read_rgb(path: Path) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any image file, every mode read as ``predict.py`` reads it
    (:func:`recattend.data.images.image_array`: alpha dropped, 16-bit and float images scaled by
    their range, not clipped), deeper images then rounded to 8 bits."""
    with Image.open(path) as image:
        image.load()  # decode now: truncation shows here, not later
        return to_display(image_array(image))


def image_size(path: Path) -> tuple[int, int]:
    """(H, W) as a viewer shows the image (its EXIF orientation applied, as :func:`read_rgb`
    reads it), from the file header, without decoding the pixels."""
    with Image.open(path) as image:
        return upright_size(image)


def colour_instances(label: np.ndarray) -> np.ndarray:
    """(N, H, W) bool masks from a colour-coded instance map: one instance per non-black colour.

    Accepts (H, W) index maps (palette PNGs read as indices: one instance per non-zero index) and
    (H, W, C) colour maps. Instances come in increasing colour order.
    """
    if label.ndim == 3:
        flat = label.reshape(-1, label.shape[2]).astype(np.int64)
        codes = np.zeros(flat.shape[0], np.int64)
        for c in range(flat.shape[1]):
            codes = codes * 256 + flat[:, c]
        label = codes.reshape(label.shape[:2])
    ids = np.unique(label)
    ids = ids[ids != 0]
    return label[None] == ids[:, None, None]


def layout_error(
    name: str, root: Path | str, examples: Sequence[str], source: str, why: str
) -> FileNotFoundError:
    """The error for a ``dataset.root`` that does not hold the expected layout."""
    shown = "\n".join(f"  {Path(root) / e}" for e in examples)
    return FileNotFoundError(
        f"dataset.root={root}: {why}. {name} is expected in its official layout, e.g.\n{shown}\n"
        f"Get it from {source} and point dataset.root at that folder "
        "(python train.py dataset=... dataset.root=/path/to/it)."
    )


class FileInstances(Sequence[RawSample]):
    """Samples read from files on access, skipping (or failing on) unreadable ones.

    Args:
        entries: the split's samples, already scanned (:func:`scan`).
        read: turns one entry into a raw sample; may raise any of ``READ_ERRORS``.
        on_bad_file: "skip" (warn, counting the skipped files, and serve the next entry) or
            "fail" (raise :class:`BadFileError` naming the file).
    """

    def __init__(
        self, entries: Sequence[Entry], read: Callable[[Entry], RawSample], on_bad_file: str
    ) -> None:
        self.entries, self.read, self.on_bad_file = list(entries), read, on_bad_file
        self.skipped: set[str] = set()

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int) -> RawSample:  # type: ignore[override]
        if not 0 <= index < len(self.entries):
            raise IndexError(index)
        for offset in range(len(self.entries)):
            entry = self.entries[(index + offset) % len(self.entries)]
            try:
                return self.read(entry)
            except READ_ERRORS as err:
                if self.on_bad_file == "fail":
                    raise BadFileError(
                        f"cannot read sample {entry.id} ({entry.image}): {err}"
                    ) from err
                self.skipped.add(entry.id)
                log.warning(
                    "skipped unreadable sample %s (%s): %s; %d file(s) skipped so far in this "
                    "process (dataset.on_bad_file=fail stops instead)",
                    entry.id, entry.image, err, len(self.skipped),
                )  # fmt: skip
        raise BadFileError(f"every sample of this split is unreadable ({len(self.entries)} tried)")


def scan(entries: Sequence[Entry], labelled: bool) -> tuple[list[Entry], list[str]]:
    """Check headers: the image opens, the label exists and has the image's size.

    Returns:
        The usable entries and one line per problem (``<path>: <what is wrong>``).
    """
    good, problems = [], []
    for entry in entries:
        try:
            size = image_size(entry.image)
        except READ_ERRORS as err:
            problems.append(f"{entry.image}: unreadable image ({err})")
            continue
        if labelled:
            if entry.label is None or not entry.label.exists():
                problems.append(f"{entry.image}: no label ({entry.label or 'none listed'})")
                continue
            if entry.label.suffix.lower() == ".png":
                try:
                    label_size = image_size(entry.label)
                except READ_ERRORS as err:
                    problems.append(f"{entry.label}: unreadable label ({err})")
                    continue
                if label_size != size:
                    problems.append(
                        f"{entry.label}: label size {label_size[0]}x{label_size[1]} does not "
                        f"match the image's {size[0]}x{size[1]}"
                    )
                    continue
        good.append(entry)
    return good, problems


class FileDataModule(InstanceDataModule):
    """A DataModule over files in a dataset's official layout.

    Subclasses implement :meth:`entries` (list a split) and :meth:`read` (one entry to a raw
    sample); the scan, the bad-file policy and the empty-split check are here.

    Args:
        root: the dataset folder (``dataset.root``).
        on_bad_file: "skip" or "fail" (module docstring).
        **kwargs: the :class:`~recattend.data.base.InstanceDataModule` arguments.
    """

    def __init__(self, *, root: str | Path, on_bad_file: str = "skip", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if on_bad_file not in ON_BAD_FILE:
            raise ValueError(f"dataset.on_bad_file={on_bad_file!r} must be one of {ON_BAD_FILE}")
        if root is None or str(root) in ("", "???"):
            raise ValueError("dataset.root is not set: point it at the dataset folder")
        self.root = Path(root).expanduser()
        self.on_bad_file = on_bad_file
        self._extras: dict[str, dict[str, Any]] = {}  # per sample id, e.g. COCO annotations

    @abstractmethod
    def entries(self, split: str) -> list[Entry]:
        """The samples of ``split`` ("train", "val" or "test"), unchecked."""

    @abstractmethod
    def read_instances(self, entry: Entry) -> Instances:
        """Decode one entry's ground truth (may raise ``READ_ERRORS``)."""

    def read(self, entry: Entry) -> RawSample:
        """Decode one entry: the image and, when it has a label, its instances.

        Raises:
            ValueError: the label's size differs from the image's (or any of ``READ_ERRORS``).
        """
        image = read_rgb(entry.image)
        labelled = entry.label is not None and entry.label.exists()
        if labelled:
            masks, classes, semantic = self.read_instances(entry)
        else:
            masks, classes, semantic = np.zeros((0, *image.shape[:2]), bool), None, None
        if masks.shape[1:] != image.shape[:2]:
            raise ValueError(
                f"the label is {masks.shape[1]}x{masks.shape[2]} but the image is "
                f"{image.shape[0]}x{image.shape[1]}"
            )
        meta = {
            "id": entry.id,
            "image": str(entry.image),
            "label": str(entry.label) if labelled else None,
            "orig_size": image.shape[:2],
            **entry.extra.get("meta", {}),
        }
        return RawSample(image, masks, meta, classes, semantic)

    def original_target(self, meta: dict[str, Any]) -> np.ndarray:
        """The ground truth of a sample at its original resolution, as an (H, W) int32 label map
        (0 background, instances 1..N in reading order, later ones on top), read again from its
        file so that training batches never carry it."""
        entry = Entry(
            meta["id"], Path(meta["image"]), Path(meta["label"]), self._extras.get(meta["id"], {})
        )
        masks = self.read_instances(entry)[0]
        labels = np.zeros(masks.shape[1:], np.int32)
        for k, mask in enumerate(masks, start=1):
            labels[mask] = k
        return labels

    def expected_count(self, entry: Entry) -> int | None:
        """The instance count the dataset's own index gives for ``entry`` (None: no index)."""
        return None

    def build_source(self, split: str) -> FileInstances:
        if not self.labelled(split):
            raise ValueError(
                f"the {split} split of {type(self).__name__} has no labels (an unlabelled test "
                "folder serves prediction, not training or evaluation); point the test split at "
                "labelled data or run with test=false"
            )
        good, problems = scan(self.entries(split), self.labelled(split))
        self._extras.update({e.id: e.extra for e in good if e.extra})
        if problems:
            listing = "\n  ".join(problems[:10]) + (
                f"\n  ... and {len(problems) - 10} more" if len(problems) > 10 else ""
            )
            if self.on_bad_file == "fail":
                raise BadFileError(f"{len(problems)} problem(s) in the {split} split:\n  {listing}")
            log.warning(
                "%d file(s) of the %s split skipped (dataset.on_bad_file=fail stops):\n  %s",
                len(problems), split, listing,
            )  # fmt: skip
        return FileInstances(good, self.read, self.on_bad_file)

    def check(self) -> dict[str, Any]:
        """Walk every split, decoding every file: counts, instance statistics and problems.

        Returns:
            Per split: ``images``, ``problems`` (list of lines), ``instances`` (min, mean, max per
            image) and ``sizes`` (distinct original (H, W), up to 5).
        """
        report: dict[str, Any] = {}
        for split in ("train", "val", "test"):
            try:
                entries = self.entries(split)
            except FileNotFoundError as err:
                report[split] = {"images": 0, "problems": [str(err)]}
                continue
            good, problems = scan(entries, self.labelled(split))
            if not entries:
                problems.append(
                    f"the {split} split is empty: training stops on it at the start; check "
                    "dataset.root and the split settings (e.g. dataset.val_fraction)"
                )
            counts, sizes = [], set()
            for entry in good:
                try:
                    raw = self.read(entry)
                    clear = transparent_fraction(entry.image)
                except READ_ERRORS as err:
                    problems.append(f"{entry.image}: cannot decode ({err})")
                    continue
                counts.append(raw.masks.shape[0])
                sizes.add(tuple(raw.meta["orig_size"]))
                expected = self.expected_count(entry)
                if self.labelled(split) and expected is not None and expected != counts[-1]:
                    problems.append(
                        f"{entry.label}: {counts[-1]} instances, the dataset index says {expected}"
                    )
                if counts[-1] > self.max_instances:
                    problems.append(
                        f"{entry.label}: {counts[-1]} instances, more than the "
                        f"{self.max_instances} slots (dataset.max_instances): the smallest "
                        f"{counts[-1] - self.max_instances} are left out of training and scoring"
                    )
                if clear > 0:
                    problems.append(
                        f"{entry.image}: {100 * clear:.1f} % of it is transparent; recattend drops "
                        "the alpha channel and segments those pixels like the rest (make them "
                        "opaque, or crop them away)"
                    )
            report[split] = {
                "images": len(entries),
                "problems": problems,
                "instances": (min(counts), float(np.mean(counts)), max(counts)) if counts else None,
                "sizes": sorted(sizes)[:5],
            }
        return report
