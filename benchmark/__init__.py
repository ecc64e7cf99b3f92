"""sg2i-bench: a benchmarking suite for scene-graph-to-image generation."""

__version__ = "0.1.0"
