"""Small datasets written in the official on-disk layouts, for tests and the loading benchmark.

The real datasets cannot be downloaded here nor redistributed; these writers produce the same file
names, PNG modes, bit depths and JSON schema (docs/datasets.md) with known instances drawn
by the synthetic ``shapes`` renderer. Each writer returns {sample id: (N, H, W) bool masks} (and
the classes where the dataset has them) so tests can compare what a loader reads with the truth.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from recattend.data.synthetic import render_shapes


def scene(seed: int, size: tuple[int, int], count: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (N, H, W) bool visible instance masks, N <= count (occluded
    shapes dropped), disjoint."""
    rng = np.random.default_rng(seed)
    image, masks = render_shapes(rng, size, count, ("circle", "square"))
    return image, masks[masks.any(axis=(1, 2))]


def _index_map(masks: np.ndarray, ids: np.ndarray) -> np.ndarray:
    out = np.zeros(masks.shape[1:], np.int64)
    for mask, i in zip(masks, ids, strict=True):
        out[mask] = i
    return out


def _colours(n: int, seed: int) -> np.ndarray:
    """n distinct non-black RGB colours."""
    rng = np.random.default_rng(seed)
    codes = rng.choice(np.arange(1, 2**24), size=n, replace=False)
    return np.stack([(codes >> 16) & 255, (codes >> 8) & 255, codes & 255], axis=1).astype(np.uint8)


def _colour_map(masks: np.ndarray, seed: int) -> np.ndarray:
    out = np.zeros((*masks.shape[1:], 3), np.uint8)
    for mask, colour in zip(masks, _colours(len(masks), seed), strict=True):
        out[mask] = colour
    return out


def write_cvppp(
    folder: Path,
    plants: list[int],
    size: tuple[int, int] = (96, 104),
    labels: bool = True,
    rgba: bool = True,
) -> dict[str, np.ndarray]:
    """A1 layout: ``plantNNN_rgb.png`` (RGBA when ``rgba``), palette ``plantNNN_label.png``,
    ``plantNNN_fg.png`` and ``A1.csv``."""
    folder.mkdir(parents=True, exist_ok=True)
    truth, lines = {}, []
    for plant in plants:
        name = f"plant{plant:03d}"
        image, masks = scene(plant, size, 3 + plant % 4)
        rgb = Image.fromarray(image)
        (rgb.convert("RGBA") if rgba else rgb).save(folder / f"{name}_rgb.png")
        Image.fromarray(masks.any(0).astype(np.uint8)).save(folder / f"{name}_fg.png")
        if labels:
            label = Image.fromarray(
                _index_map(masks, np.arange(1, len(masks) + 1)).astype(np.uint8)
            )
            label = label.convert("P")
            label.putpalette(_colours(256, 0).flatten().tolist())
            label.save(folder / f"{name}_label.png")
        truth[name] = masks
        lines.append(f"{name}_rgb.png,{len(masks)}")
    if labels:
        (folder / "A1.csv").write_text("\n".join(lines) + "\n")
    return truth


def write_kitti(
    root: Path, splits: dict[str, list[str]], size: tuple[int, int] = (75, 248)
) -> dict[str, np.ndarray]:
    """The authors' layout: ``images/``, ``gt/`` (train), ``gt_man/`` (val, test) colour maps and
    ``train.txt``, ``valid_man.txt``, ``test_man.txt``."""
    files = {"train": ("train.txt", "gt"), "val": ("valid_man.txt", "gt_man"),
             "test": ("test_man.txt", "gt_man")}  # fmt: skip
    truth = {}
    for split, ids in splits.items():
        listing, labels = files[split]
        for sub in ("images", labels):
            (root / sub).mkdir(parents=True, exist_ok=True)
        for i in ids:
            image, masks = scene(int(i), size, 2 + int(i) % 4)
            Image.fromarray(image).save(root / "images" / f"{i}.png")
            Image.fromarray(_colour_map(masks, int(i))).save(root / labels / f"{i}.png")
            truth[i] = masks
        (root / listing).write_text("".join(f"{i}\n" for i in ids))
    return truth


def write_cityscapes(
    root: Path, split: str, cities: dict[str, int], size: tuple[int, int] = (64, 128)
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``leftImg8bit/<split>/<city>/..._leftImg8bit.png`` and 16-bit
    ``gtFine/<split>/<city>/..._gtFine_instanceIds.png``.

    Per image: cars (26), persons (24) and a bicycle (33) as instances, one caravan (29, ignored),
    a crowd region of cars (plain 26) and road (7) elsewhere. Returns {stem: (masks, train ids)}
    for the kept instances.
    """
    truth = {}
    for city, frames in cities.items():
        (root / "leftImg8bit" / split / city).mkdir(parents=True, exist_ok=True)
        (root / "gtFine" / split / city).mkdir(parents=True, exist_ok=True)
        for frame in range(frames):
            stem = f"{city}_{frame:06d}_000019"
            seed = sum(map(ord, city)) * 100 + frame
            image, masks = scene(seed, size, 6)
            ids = np.full(size, 7, np.int32)  # road
            ids[: size[0] // 8, : size[1] // 8] = 26  # a crowd / group region of cars
            label_ids = [26, 24, 33, 29, 26, 24][: len(masks)]
            kept, classes = [], []
            for k, (mask, label_id) in enumerate(zip(masks, label_ids, strict=False)):
                ids[mask] = label_id * 1000 + k
                if label_id != 29:
                    kept.append(mask)
                    classes.append({26: 3, 24: 1, 33: 8}[label_id])
            Image.fromarray(image).save(
                root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png"
            )
            Image.fromarray(ids.astype(np.uint16)).save(
                root / "gtFine" / split / city / f"{stem}_gtFine_instanceIds.png"
            )
            truth[stem] = (np.asarray(kept).reshape(-1, *size), np.asarray(classes, np.int64))
    return truth


def _polygon(mask: np.ndarray) -> list[list[float]]:
    """A square mask's outline as one COCO polygon (pixel edges)."""
    ys, xs = np.nonzero(mask)
    y0, x0, y1, x1 = ys.min(), xs.min(), ys.max() + 1, xs.max() + 1
    return [
        [float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]
    ]


def write_coco(
    root: Path, name: str, images: int, size: tuple[int, int] = (60, 80)
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``annotations/instances_<name>.json`` and ``<name>/<id:012d>.jpg``.

    Categories zebra (24) and giraffe (25). Per image: a zebra as a polygon (a square), a zebra
    as compressed RLE, a giraffe as uncompressed RLE, and a crowd region of zebras (iscrowd=1);
    every third image has only a giraffe. Returns {image id: (zebra masks, classes)} in
    annotation order, for ``categories=[zebra]``.
    """
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / name).mkdir(parents=True, exist_ok=True)
    h, w = size
    dataset = {
        "info": {"description": "recattend fixture"},
        "licenses": [],
        "images": [],
        "annotations": [],
        "categories": [
            {"id": 24, "name": "zebra", "supercategory": "animal"},
            {"id": 25, "name": "giraffe", "supercategory": "animal"},
        ],
    }
    truth = {}
    for index in range(images):
        image_id = 1000 + index
        file_name = f"{image_id:012d}.jpg"
        image = np.full((h, w, 3), 90, np.uint8)
        square = np.zeros((h, w), bool)
        square[5:25, 5:25] = True
        blob = np.zeros((h, w), bool)
        blob[30:50, 40:70] = True
        blob[35:45, 30:40] = True
        giraffe = np.zeros((h, w), bool)
        giraffe[5:20, 50:75] = True
        crowd = np.zeros((h, w), bool)
        crowd[50:58, 2:30] = True
        for mask, value in ((square, 200), (blob, 150), (giraffe, 60), (crowd, 220)):
            image[mask] = value
        Image.fromarray(image).save(root / name / file_name, quality=95)
        dataset["images"].append({"id": image_id, "file_name": file_name, "height": h, "width": w})

        if index % 3 == 2:
            objects = [(giraffe, 25, _uncompressed_rle(giraffe), 0)]
            truth[str(image_id)] = (np.zeros((0, h, w), bool), np.zeros(0, np.int64))
        else:
            rle = mask_utils.encode(np.asfortranarray(blob.astype(np.uint8)))
            rle["counts"] = rle["counts"].decode("ascii")
            objects = [
                (square, 24, _polygon(square), 0),
                (blob, 24, rle, 0),
                (giraffe, 25, _uncompressed_rle(giraffe), 0),
                (crowd, 24, _uncompressed_rle(crowd), 1),
            ]
            truth[str(image_id)] = (np.stack([square, blob]), np.array([1, 1]))
        for mask, category, segmentation, crowd_flag in objects:
            dataset["annotations"].append({
                "id": len(dataset["annotations"]) + 1, "image_id": image_id,
                "category_id": category, "segmentation": segmentation,
                "area": float(mask.sum()), "bbox": [0.0, 0.0, 1.0, 1.0], "iscrowd": crowd_flag,
            })  # fmt: skip
    (root / "annotations" / f"instances_{name}.json").write_text(json.dumps(dataset))
    return truth


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE: run lengths over the column-major pixels, starting with zeros."""
    flat = mask.flatten(order="F").astype(np.int8)
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": list(mask.shape), "counts": counts}
