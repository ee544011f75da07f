"""Albumentations pipelines from the ``dataset.augment.per_image`` mapping of a dataset config.

``per_image`` maps an albumentations transform name to its keyword arguments, in application
order, e.g. ``{HorizontalFlip: {p: 0.5}, Affine: {rotate: [-10, 10], p: 0.5}}``; a ``null`` value
turns an entry off (``dataset.augment.per_image.HorizontalFlip=null``). Names are resolved here
rather than with Hydra ``_target_`` so that every ``_target_`` in the configs stays inside
recattend, torch or lightning.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Mapping
from typing import Any

import albumentations as A
import cv2


def build_transform(
    augment: Mapping[str, Mapping[str, Any] | None] | None,
    resolution: tuple[int, int],
    keep_aspect_ratio: bool = False,
) -> A.Compose:
    """Compose the configured augmentations followed by a resize to the network resolution.

    Geometric transforms are applied jointly to the image and to every instance mask (pass them
    as ``masks=`` of shape (N, H, W)); masks are resized with nearest neighbour and images with
    bicubic interpolation, as the authors did. With ``keep_aspect_ratio`` the image is fitted
    inside the resolution and zero-padded at the bottom and right instead of stretched.

    Raises:
        ValueError: a name that is not an albumentations transform, or arguments it rejects.
    """
    steps: list[A.BasicTransform] = []
    for name, kwargs in (augment or {}).items():
        if kwargs is None:
            continue
        cls = getattr(A, name, None)
        if not (isinstance(cls, type) and issubclass(cls, A.BasicTransform)):
            close = difflib.get_close_matches(name, dir(A), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ValueError(
                f"dataset.augment.per_image.{name}: '{name}' is not an albumentations "
                f"transform.{hint} "
                "Use a class name from albumentations (e.g. HorizontalFlip, Affine, ColorJitter)."
            )
        try:
            # albumentations only warns about unknown arguments; a typo must not pass silently.
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                steps.append(cls(**dict(kwargs)))
            rejected = [str(w.message) for w in caught if "not valid" in str(w.message)]
            if rejected:
                raise ValueError("; ".join(rejected))
        except (TypeError, ValueError) as err:
            raise ValueError(
                f"dataset.augment.per_image.{name}: invalid arguments {dict(kwargs)}: {err}"
            ) from err
    height, width = resolution
    # Masks take the pixel nearest each output pixel's centre (NEAREST_EXACT), as the image's
    # resampling is centred; plain NEAREST takes each block's top-left pixel, which put the
    # masks (s - 1) / 2 source pixels up and left of the image at a downscale s.
    interpolation = {
        "interpolation": cv2.INTER_CUBIC,
        "mask_interpolation": cv2.INTER_NEAREST_EXACT,
    }
    if keep_aspect_ratio:  # fit inside, then zero-pad the bottom and right
        steps.append(A.LongestMaxSize(max_size_hw=(height, width), **interpolation))
        steps.append(
            A.PadIfNeeded(
                height, width, position="top_left", border_mode=cv2.BORDER_CONSTANT, fill=0,
                fill_mask=0,
            )
        )  # fmt: skip
    else:
        steps.append(A.Resize(height, width, **interpolation))
    return A.Compose(steps)
