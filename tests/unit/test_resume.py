"""router/resume.py: what ``--resume`` takes from the database and what a relaunch says
it discards, over a real store written by a real IPAM service."""

from __future__ import annotations

import random
from dataclasses import replace
from ipaddress import IPv4Network
from pathlib import Path

import pytest
import trio

from router import resume
from router.config import MeshConfig, RouterConfig
from router.errors import ConfigError
from router.ipam import AllocatorConfig, Seed
from router.ipam.service import IpamService
from router.mesh.gossip import GossipRouter
from router.mesh.names import PeerName
from router.store import Store

A = PeerName(1)
RANGE = IPv4Network("10.40.0.0/16")
SUBNET = IPv4Network("10.40.7.0/24")


async def _launched(path: Path, config: RouterConfig, allocations: int) -> None:
    with Store.open(path) as store:
        gossip = GossipRouter(A, now=trio.current_time(), rng=random.Random(1))
        ipam = IpamService(AllocatorConfig(A, config.ipalloc_range, mode=Seed((A,)),
                                           default_subnet=config.ipalloc_default_subnet),
                           store, register=gossip.register, rng=random.Random(1))
        for i in range(allocations):
            await ipam.allocate(f"c{i}")
        resume.record(store, config)


def _config(*, password: bytes | None = None, resume_: bool = False,
            universe: IPv4Network | None = None) -> RouterConfig:
    config = RouterConfig(mesh=MeshConfig(password=password, resume=resume_))
    return config if universe is None else replace(config, ipalloc_range=universe)


async def test_the_recorded_settings_and_the_ipam_summary_read_back(tmp_path: Path) -> None:
    path = tmp_path / "weave.db"
    launched = replace(_config(password=b"pw"), ipalloc_range=RANGE,
                       ipalloc_default_subnet=SUBNET)
    await _launched(path, launched, 4)
    before = path.read_bytes()
    found = resume.read_file(path)
    assert found == resume.Persisted(ipalloc_range=RANGE, default_subnet=SUBNET,
                                     encrypted=True, ipam_range=RANGE, ipam_peer=A,
                                     addresses=4, holders=4)
    assert path.read_bytes() == before
    assert b"pw" not in before
    assert resume.read_file(tmp_path / "none.db") is None


async def test_resume_fills_in_what_was_not_given(tmp_path: Path) -> None:
    path = tmp_path / "weave.db"
    await _launched(path, replace(_config(), ipalloc_range=RANGE,
                                  ipalloc_default_subnet=SUBNET), 2)
    persisted = resume.read_file(path)
    config, notices = resume.resolve(_config(resume_=True), persisted, range_given=False,
                                     subnet_given=False)
    assert (config.ipalloc_range, config.ipalloc_default_subnet, notices) == (RANGE, SUBNET, [])
    # Without --resume the default range is used, and the discarding is said.
    config, notices = resume.resolve(_config(), persisted, range_given=False,
                                     subnet_given=False)
    assert config.ipalloc_range == IPv4Network("10.32.0.0/12")
    assert len(notices) == 1 and "2 addresses of 2 containers" in notices[0], notices
    # An explicit range wins over the recorded one, with --resume too (and is said).
    config, notices = resume.resolve(_config(resume_=True, universe=IPv4Network(
        "10.50.0.0/16")), persisted, range_given=True, subnet_given=False)
    assert config.ipalloc_range == IPv4Network("10.50.0.0/16") and len(notices) == 1


async def test_encryption_is_resumed_never_silently_dropped(tmp_path: Path) -> None:
    path = tmp_path / "weave.db"
    await _launched(path, _config(password=b"secret"), 1)
    persisted = resume.read_file(path)
    with pytest.raises(ConfigError, match=r"^--resume: this router ran encrypted"):
        resume.resolve(_config(resume_=True), persisted, range_given=False,
                       subnet_given=False)
    _, notices = resume.resolve(_config(resume_=True, password=b"secret"), persisted,
                                range_given=False, subnet_given=False)
    assert notices == []
    _, notices = resume.resolve(_config(), persisted, range_given=False, subnet_given=False)
    assert notices == ["this router ran encrypted before; it now runs WITHOUT encryption "
                       "(no --password or WEAVE_PASSWORD)"]
