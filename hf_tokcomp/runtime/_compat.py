"""The transformers versions this package is tested with, checked at import."""

from __future__ import annotations

import transformers
from packaging.version import Version

__all__ = ["SUPPORTED_TRANSFORMERS", "VERSION", "check_transformers_version", "transformers_supported"]

#: this package's version (pyproject.toml reads the same number)
VERSION = "0.1.0"

#: minimum (inclusive) and maximum (exclusive) tested transformers versions; keep in sync with pyproject.toml
SUPPORTED_TRANSFORMERS = ("5.23.0", "5.24.0")


def transformers_supported(version: str = transformers.__version__) -> bool:
    """Whether the model classes can be imported with this transformers version."""
    low, high = SUPPORTED_TRANSFORMERS
    return Version(low) <= Version(version) < Version(high)


def check_transformers_version(version: str = transformers.__version__) -> None:
    """Raise ImportError naming the installed and the supported versions when they differ."""
    low, high = SUPPORTED_TRANSFORMERS
    if not transformers_supported(version):
        raise ImportError(
            f"hf_tokcomp supports transformers>={low},<{high} (it subclasses model internals that change "
            f"between minor releases), but transformers {version} is installed. Run "
            f"`pip install 'transformers>={low},<{high}'`."
        )
