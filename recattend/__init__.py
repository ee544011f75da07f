"""recattend: end-to-end instance segmentation with recurrent attention (Ren & Zemel, CVPR 2017).

Subpackages follow one direction of dependency: ``tasks`` -> ``lit``/``callbacks`` ->
``models``/``data`` -> ``utils``. ``models`` never imports Lightning; ``data`` never imports models.
"""

__version__ = "0.1.0"
