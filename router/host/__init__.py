"""The host on the weave network: expose/hide and the router's own firewall table."""
