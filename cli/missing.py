"""Weave's commands that this version of weave-router lacks, and what to tell their users.

A user coming from Weave types these (the seeds and ``cli.md`` list them). Instead of
argparse's ``invalid choice``, each gets one line on stderr saying what the command does
in Weave and that this version lacks it, or what to use instead; the exit code is 1.
"""

from __future__ import annotations

PROG = "weave-router"

# command -> (what it is, in the help list; the line printed after "weave-router: COMMAND: ")
MISSING: dict[str, tuple[str, str]] = {
    "setup": ("download Weave's images",
              "downloads Weave's Docker images; weave-router has no images: not applicable "
              "(install it with `make setup`)"),
    "env": ("DOCKER_HOST for the proxy",
            "prints DOCKER_HOST for Weave's Docker API proxy, which was removed in Weave 2.0 "
            "and weave-router does not have: not applicable"),
    "launch-dns": ("start DNS (Weave 1.x)",
                   "DNS is part of launch in Weave 2.x: use `weave-router launch` instead "
                   "(--no-dns turns it off)"),
    "launch-proxy": ("start the Docker API proxy (Weave 1.x)",
                     "the Docker API proxy was removed in Weave 2.0: use `weave-router "
                     "attach` instead"),
}



def missing_command(name: str) -> str:
    """The one line for a command of :data:`MISSING`."""
    return f"{PROG}: {name}: {MISSING[name][1]}"
