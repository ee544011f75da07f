"""recattend: end-to-end instance segmentation with recurrent attention (Ren & Zemel, CVPR 2017).

Packages depend one way (docs/design.md): ``tasks`` -> ``lit``, ``evaluation``, ``callbacks`` ->
``models``, ``losses``, ``metrics``, ``postprocess``, ``data``. ``models`` imports no Lightning,
Hydra or OmegaConf.
"""

__version__ = "0.2.0"  # the package's version (pyproject.toml reads it from here)

__all__ = ["Segmentation", "Segmenter", "__version__"]


def __getattr__(name: str) -> object:
    # The Python API (recattend.api) on first use: importing recattend.models or recattend.data
    # loads recattend first, and must not pull in Lightning with it.
    if name in ("Segmenter", "Segmentation"):
        from recattend import api

        return getattr(api, name)
    raise AttributeError(f"module 'recattend' has no attribute {name!r}")
