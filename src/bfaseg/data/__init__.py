"""Data: readers for the benchmark layouts, synthetic phantoms, augmentation, batches."""

from bfaseg.data.cases import Case

__all__ = ["Case"]
