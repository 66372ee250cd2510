"""birdclef: a reproducible, DVC-tracked rebuild of the BirdCLEF+ 2025 2nd-place solution."""

__version__ = "0.1.0"
