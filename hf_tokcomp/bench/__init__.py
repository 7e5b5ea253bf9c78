"""The speed benchmark (``tokcomp bench``): the published models' widths and the timing harness."""

__all__: list[str] = []
