"""The network the services talk through: real trio sockets, or the simulator's fake."""
