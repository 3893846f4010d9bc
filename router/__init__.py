"""weave-router: Weave Net's router, rebuilt in Python (trio control plane, Cython data plane)."""

__version__ = "0.1.0"
