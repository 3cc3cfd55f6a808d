"""histostain: stain translation and nuclei segmentation for computational pathology.

Importing the package is cheap on purpose: no torch, no logging configuration, no I/O.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
