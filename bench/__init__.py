"""Benchmarks of the data plane (not tests: nothing here asserts a speed).

``python -m bench.run`` (``make bench``): two hosts in network namespaces, a container on
each, iperf3 TCP and ping latency container to container through the underlay alone,
kernel VXLAN set up by hand, and weave-router sleeve (plain and encrypted), printed as a
table of ratios to the kernel VXLAN figure of the same run. ``python -m
bench.micro_fastpath``: the data plane's encapsulate/seal/open cost per core, no devices.
See ``bench/README.md``.
"""
