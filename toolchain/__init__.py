"""edgelm: compact LFM2-family language models on real boards (export, build, deploy, validate)."""

__version__ = "0.1.0"
