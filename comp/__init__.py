"""comp: a toolkit for the mask x gender x age image classification competition (macro F1)."""
import os as _os

# albumentations checks PyPI for a newer release at import: a network call on every run.
_os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

__version__ = "0.1.0"
