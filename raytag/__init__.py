"""raytag: find which tasks to train together, estimated from projected per-sample gradients."""

__version__ = "0.1.0"
