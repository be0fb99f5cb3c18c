"""shrinkflow: reproducible compression (distill, prune, quantize) of PyTorch image classifiers."""

__version__ = "0.1.0"
