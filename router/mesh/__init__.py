"""The mesh: peers, their connections, topology gossip, routes and the connection maker."""
