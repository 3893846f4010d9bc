"""The router side of the CNI plugin (``cni/``): ADD/DEL/CHECK/STATUS/GC behind the API."""
