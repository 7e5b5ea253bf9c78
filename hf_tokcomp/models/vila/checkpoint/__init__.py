"""Reading and writing VILA1.5's original three-folder checkpoint layout."""

from .loading import load_original, save_original

__all__ = ["load_original", "save_original"]
