"""Benchmarks of the data plane and IPAM (not tests: nothing here asserts a speed).

``python -m bench.run`` (``make bench``): two hosts in network namespaces, a container on
each, iperf3 TCP and ping latency container to container through the underlay alone,
kernel VXLAN set up by hand, and weave-router sleeve (plain and encrypted), printed as a
table of ratios to the kernel VXLAN figure of the same run. ``python -m
bench.micro_fastpath``: the data plane's encapsulate/seal/open cost per core, no devices.
``python -m bench.ipam`` (``make bench-ipam``, also run by ``make bench``): IPAM
allocations per second and latency through the HTTP API on one peer, and the time three
peers take to reach consensus. See ``bench/README.md``.
"""
