"""Compressor-only repos and compressor loading: the repo config, reader, writer, remote-code generator, the
resolution of ``compressor=`` and the model mixin that loads / saves a compressed model with its compressor.
"""

from .config import TokCompConfig
from .loader import TokCompForImageTextToText, is_compressor_repo, load_repo_compressor
from .mixin import CompressorHubMixin
from .remote_code import remote_code
from .resolve import check_repo_base, resolve_compressor
from .writer import push_compressor_repo, render_card, save_compressor_repo

__all__ = [
    "CompressorHubMixin",
    "TokCompConfig",
    "TokCompForImageTextToText",
    "check_repo_base",
    "is_compressor_repo",
    "load_repo_compressor",
    "push_compressor_repo",
    "remote_code",
    "render_card",
    "resolve_compressor",
    "save_compressor_repo",
]
