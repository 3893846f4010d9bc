"""Containers on the weave network: attach, detach, ps."""
