"""router/host/: the table's rules (pure) and the HostService on the fake kernel and the
fake nft (router/kernel/nft_fake.py): expose/hide, a flushed table put back, reset,
masquerade flags surviving a restart; and the CLI's argument errors for expose/hide."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from cli.main import main
from router.errors import ConfigError
from router.host.rules import TABLE, Exposure, HostRules, networks, table_commands
from router.host.service import EXPOSE_IDENT, HostService
from router.kernel.fake import FakeKernel
from router.kernel.nft import commands_view, parse_listing, replace_batch
from router.kernel.nft_events import SAFETY_INTERVAL, NftEvents
from router.kernel.nft_fake import FakeNft
from router.kernel.port import AddAddress, AddBridge, SetUp
from router.store import Store

E1 = ipaddress.IPv4Interface("10.32.0.1/12")
E2 = ipaddress.IPv4Interface("192.168.5.1/24")


def _comments(rules: HostRules) -> set[str]:
    return {r.comment for r in commands_view(table_commands(rules)).rules}


def test_protection_is_there_without_any_exposure() -> None:
    got = _comments(HostRules("weave", 6783))
    assert {"weave-router:router-tcp", "weave-router:router-udp",
            "weave-router:from-bridge", "weave-router:to-bridge"} <= got
    assert not any("masquerade" in c for c in got)
    [udp] = [c for c in table_commands(HostRules("weave", 7000))
             if c["add"].get("rule", {}).get("comment") == "weave-router:router-udp"]
    assert {"range": [7000, 7001]} in [e["match"]["right"] for e in udp["add"]["rule"]["expr"]
                                       if "match" in e]


def test_nothing_exposed_needs_no_connection_tracking() -> None:
    """No ct match and no NAT chain until something is exposed: the table alone must not
    make the kernel track every bridged frame (br_netfilter)."""
    def tracking(rules: HostRules) -> tuple[bool, bool]:
        text = str(table_commands(rules))
        return "'ct'" in text, "'nat'" in text

    assert tracking(HostRules("weave", 6783)) == (False, False)
    assert tracking(HostRules("weave", 6783, (Exposure(E2, False),))) == (True, True)


def test_exposures_open_forwarding_and_masquerade_only_when_asked() -> None:
    rules = HostRules("weave", 6783, (Exposure(E1, True), Exposure(E2, False)))
    got = _comments(rules)
    assert {"weave-router:expose-in-10.32.0.0/12", "weave-router:expose-out-192.168.5.0/24",
            "weave-router:masquerade-out-10.32.0.0/12",
            "weave-router:masquerade-in-10.32.0.0/12"} <= got
    assert "weave-router:masquerade-out-192.168.5.0/24" not in got
    assert networks(rules.exposures, masquerade=False) == [E2.network]


def test_replace_batch_is_one_transaction_that_works_with_or_without_the_table() -> None:
    batch = replace_batch(TABLE, table_commands(HostRules("weave", 6783)))["nftables"]
    ref = {"table": {"family": "inet", "name": "weave-router"}}
    assert batch[:3] == [{"add": ref}, {"delete": ref}, {"add": ref}]


def test_listing_is_read_back_as_the_commands_made_it() -> None:
    commands = table_commands(HostRules("weave", 6783, (Exposure(E1),)))
    listing = {"nftables": [{"metainfo": {}}, {"table": {"family": "inet", "name": "x"}}]
               + [{k: {**v, "handle": i}} for i, c in enumerate(commands)
                  for k, v in c["add"].items()]}
    assert parse_listing(listing) == commands_view(commands)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store.open(tmp_path / "w.db")
    yield opened
    opened.close()


async def _kernel() -> FakeKernel:
    kernel = FakeKernel()
    await kernel.apply([AddBridge("weave", mtu=1376), SetUp("weave")])
    return kernel


def _service(kernel: FakeKernel, nft: FakeNft | None, store: Store) -> HostService:
    return HostService(kernel, nft, store, None, port=6783, universe=None,
                       check_interval=0.5, nft_problem="nft not found")


async def test_expose_hide_and_the_table(store: Store, nursery: trio.Nursery) -> None:
    kernel, nft = await _kernel(), FakeNft()
    service = _service(kernel, nft, store)
    await nursery.start(service.run)
    assert nft.tables[TABLE].rules  # protection from the start
    assert await service.expose([str(E1)], masquerade=True) == [str(E1)]
    assert E1 in (await kernel.snapshot()).addresses_of("weave")
    assert "weave-router:masquerade-out-10.32.0.0/12" in {
        r.comment for r in nft.tables[TABLE].rules}
    entry = await service.ps_entry()
    assert entry is not None and entry.line().startswith(f"{EXPOSE_IDENT} ")
    with pytest.raises(ConfigError, match="not exposed"):
        await service.hide([str(E2)])
    with pytest.raises(ConfigError, match="IPAM is disabled"):
        await service.expose([], masquerade=True)
    assert await service.hide([]) == [str(E1)]
    assert (await kernel.snapshot()).addresses_of("weave") == ()
    assert await service.ps_entry() is None
    assert await service.remove_table() and TABLE not in nft.tables


async def test_a_flushed_table_or_chain_is_put_back(store: Store, nursery: trio.Nursery,
                                                     autojump_clock: trio.abc.Clock) -> None:
    nft = FakeNft()
    service = _service(await _kernel(), nft, store)
    await nursery.start(service.run)
    await service.expose([str(E2)], masquerade=False)
    want = nft.tables[TABLE]
    nft.flush_ruleset()
    await trio.sleep(0.6)
    assert nft.tables[TABLE] == want and service.counters["restored"] == 1
    nft.flush_chain(TABLE, "forward")
    await trio.sleep(0.6)
    assert nft.tables[TABLE] == want and service.counters["restored"] == 2
    nft.fail = True  # nft broken for a while: counted, the service lives on
    await trio.sleep(1.1)
    assert service.counters["check_failures"] >= 2
    nft.fail = False
    await trio.sleep(0.6)
    assert await service.check() is False


async def test_with_nft_events_the_table_is_read_only_when_nftables_changed(
        store: Store, nursery: trio.Nursery, autojump_clock: trio.abc.Clock) -> None:
    """Told of nftables changes (a socketpair stands in for the netlink group), the
    service reads its table when told, and otherwise only every SAFETY_INTERVAL."""
    nft = FakeNft()
    ours, kernels = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    ours.setblocking(False)
    events = NftEvents(ours)
    service = HostService(await _kernel(), nft, store, None, port=6783, universe=None,
                          check_interval=0.5, events=events)
    await nursery.start(events.run)
    await nursery.start(service.run)
    want = nft.tables[TABLE]
    await trio.sleep(30.0)
    assert nft.reads == 0  # not every check_interval: nothing changed
    nft.flush_ruleset()
    kernels.send(b"notification")
    await trio.sleep(0.01)
    assert nft.tables[TABLE] == want and service.counters["restored"] == 1
    reads = nft.reads
    await trio.sleep(SAFETY_INTERVAL)
    assert nft.reads == reads + 1  # the safety read
    kernels.close()


async def test_masquerade_flags_survive_a_restart(store: Store) -> None:
    kernel, nft = await _kernel(), FakeNft()
    async with trio.open_nursery() as nursery:
        first = _service(kernel, nft, store)
        await nursery.start(first.run)
        await first.expose([str(E1)], masquerade=False)
        nursery.cancel_scope.cancel()
    async with trio.open_nursery() as nursery:
        second = _service(kernel, nft, store)  # the bridge kept the address
        await nursery.start(second.run)
        assert second.exposed() == (Exposure(E1, False),)
        nursery.cancel_scope.cancel()


async def test_weavedns_address_on_the_bridge_is_not_an_exposure(store: Store) -> None:
    kernel, nft = await _kernel(), FakeNft()
    await kernel.apply([AddAddress("weave", ipaddress.IPv4Interface("169.254.255.53/32"))])
    async with trio.open_nursery() as nursery:
        service = _service(kernel, nft, store)  # a restart: exposures read from the bridge
        await nursery.start(service.run)
        assert service.exposed() == () and await service.ps_entry() is None
        nursery.cancel_scope.cancel()


async def test_without_nft_expose_says_why(store: Store, nursery: trio.Nursery) -> None:
    service = _service(await _kernel(), None, store)
    await nursery.start(service.run)
    with pytest.raises(ConfigError, match="expose/hide need nftables: nft not found"):
        await service.expose([], masquerade=True)


@pytest.mark.parametrize(("argv", "says"), [
    (["expose", "10.32.0.9"], "needs a prefix length, like 10.32.1.1/12"),
    (["expose", "net:10.32.0.1/12"], "net:10.32.0.1/12"),
    (["expose", "nonsense"], "'nonsense' is not an IPv4 address"),
    (["hide", "net:10.32.0.0/12"], "hide takes the exposed addresses"),
    (["expose", "-h", "not a name!"], "is not a host name"),
])
def test_cli_argument_errors(argv: list[str], says: str,
                             capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--http-addr", "127.0.0.1:1", *argv], env={})
    out, err = capsys.readouterr()
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and says in err, err
