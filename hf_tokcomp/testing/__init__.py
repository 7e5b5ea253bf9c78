"""Tiny configs, checkpoints and inputs for tests and benchmarks: real architectures at toy sizes."""

__all__: list[str] = []
