"""helpers: compression algorithms, the layer-wise engine and the metrics behind the notebooks."""
__version__ = "0.1.0"
