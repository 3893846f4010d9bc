"""fastdp: container traffic carried by the kernel's VXLAN device (docs/fastdp.md)."""
