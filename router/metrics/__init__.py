"""Prometheus metrics of the router (docs/metrics.md)."""
