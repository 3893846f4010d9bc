"""The weave-router command line."""
