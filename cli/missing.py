"""Weave's commands that this version of weave-router lacks, and what to tell their users.

A user coming from Weave types these (the seeds and ``cli.md`` list them). Instead of
argparse's ``invalid choice``, each gets one line on stderr saying what the command does
in Weave and that this version lacks it, or what to use instead; the exit code is 1.
"""

from __future__ import annotations

PROG = "weave-router"
_NO_DNS = "weaveDNS is not in this version of weave-router"

# command -> (what it is, in the help list; the line printed after "weave-router: COMMAND: ")
MISSING: dict[str, tuple[str, str]] = {
    "dns-add": ("add a DNS name", f"adds a name to weaveDNS; {_NO_DNS}"),
    "dns-remove": ("remove a DNS name", f"removes a name from weaveDNS; {_NO_DNS}"),
    "dns-lookup": ("look a DNS name up", f"looks a name up in weaveDNS; {_NO_DNS}"),
    "dns-args": ("DNS flags for a container runtime",
                 f"prints --dns/--dns-search flags pointing at weaveDNS; {_NO_DNS}"),
    "setup": ("download Weave's images",
              "downloads Weave's Docker images; weave-router has no images: not applicable "
              "(install it with `make setup`)"),
    "env": ("DOCKER_HOST for the proxy",
            "prints DOCKER_HOST for Weave's Docker API proxy, which was removed in Weave 2.0 "
            "and weave-router does not have: not applicable"),
    "launch-dns": ("start DNS (Weave 1.x)",
                   "DNS is part of launch in Weave 2.x: use `weave-router launch` instead "
                   f"({_NO_DNS} yet)"),
    "launch-proxy": ("start the Docker API proxy (Weave 1.x)",
                     "the Docker API proxy was removed in Weave 2.0: use `weave-router "
                     "attach` instead"),
}

STATUS_DNS = f"status dns: shows weaveDNS's entries; {_NO_DNS}"


def missing_command(name: str) -> str:
    """The one line for a command of :data:`MISSING`."""
    return f"{PROG}: {name}: {MISSING[name][1]}"
