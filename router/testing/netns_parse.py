"""Parsers of ``weave-router``'s text output for the netns harness (``netns.py``).

Pure functions over the CLI's text: ``status``, ``status connections``, ``status peers``.
Re-exported by :mod:`router.testing.netns`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ConnectionLine:
    """One line of ``status connections``: ``-> 192.168.1.2:6783  established ...``."""

    outbound: bool
    address: str
    state: str
    text: str  # the whole line, stripped


def parse_connections(text: str) -> list[ConnectionLine]:
    """The connection lines of ``status connections`` output (other lines are ignored)."""
    lines = []
    for raw in text.splitlines():
        parts = raw.split()
        if len(parts) >= 3 and parts[0] in ("->", "<-"):
            lines.append(ConnectionLine(parts[0] == "->", parts[1], parts[2], raw.strip()))
    return lines


def parse_status(text: str) -> dict[str, dict[str, str]]:
    """``status`` output as ``{service: {key: value}}``; sections are split by blank lines."""
    sections: dict[str, dict[str, str]] = {}
    current: dict[str, str] = {}
    for raw in [*text.splitlines(), ""]:
        key, sep, value = raw.partition(":")
        if sep and key.strip():
            current[key.strip()] = value.strip()
        elif not raw.strip() and current:
            sections[current.get("Service", f"section{len(sections)}")] = current
            current = {}
    return sections


def parse_peers(text: str) -> dict[str, list[str]]:
    """``status peers`` output as ``{peer line: [its indented connection lines]}``."""
    peers: dict[str, list[str]] = {}
    last: list[str] | None = None
    for raw in text.splitlines():
        if not raw.strip():
            continue
        if raw[0].isspace():
            if last is not None:
                last.append(raw.strip())
        else:
            last = peers.setdefault(raw.strip(), [])
    return peers
