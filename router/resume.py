"""What ``launch --resume`` takes from the database, and what a relaunch says it discards.

A router records, in the store's ``meta`` table, the settings it was launched with that
a resume must keep (:func:`record`, once IPAM has taken up its data):

* ``ipalloc_range`` and ``ipalloc_default_subnet`` (``""``: the whole range);
* ``encrypted``: ``yes`` or ``no``, whether the mesh ran with a password. The password
  itself is never stored, neither in clear nor hashed: ``--resume`` of an encrypted
  router needs it again (``--password`` or ``WEAVE_PASSWORD``) and refuses without it.

Before a launch, :func:`read_file` reads the database without changing it and
:func:`resolve` applies the rules (``docs/persistence.md``):

* ``--resume`` fills in the range and default subnet that were not given on the command
  line from the recorded ones; refuses (one line) if the router ran encrypted and no
  password is given;
* a relaunch without ``--resume`` and without a password, of a router that ran
  encrypted, says in one line that it now runs unencrypted;
* a range (given, or the default) other than the one of the stored IPAM data discards
  that data (Weave's rule), and says so in one line with how many addresses it recorded;
  a ``--name`` other than the one of the stored IPAM data does the same.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from ipaddress import IPv4Network
from pathlib import Path

from router.config import RouterConfig
from router.errors import ConfigError
from router.ipam.persistence import unreadable_problem
from router.ipam.ring import Ring
from router.mesh.names import PeerName
from router.store import Store, StoreError, corrupt

KEY_RANGE = "ipalloc_range"
KEY_SUBNET = "ipalloc_default_subnet"
KEY_ENCRYPTED = "encrypted"


@dataclass(frozen=True)
class Persisted:
    """What the database says about the last launch and its IPAM data."""

    ipalloc_range: IPv4Network | None = None  # recorded --ipalloc-range (None: not recorded)
    default_subnet: IPv4Network | None = None
    encrypted: bool | None = None  # None: not recorded (an older weave-router wrote it)
    ipam_range: IPv4Network | None = None  # the range the stored IPAM data is for
    ipam_peer: PeerName | None = None  # the peer the stored IPAM data belongs to
    addresses: int = 0  # addresses the stored IPAM data records
    holders: int = 0  # containers (and other idents) holding them


def _network(text: str | None) -> IPv4Network | None:
    if not text:
        return None
    try:
        return IPv4Network(text)
    except ValueError:
        return None


def read(store: Store) -> Persisted:
    """The recorded settings and a summary of the stored IPAM data."""
    encrypted = store.get_meta(KEY_ENCRYPTED)
    launch_range = _network(store.get_meta(KEY_RANGE))
    ipam = store.load_ipam() if store.schema_version() >= 2 else None
    ipam_range = None
    if ipam is not None:  # the IPAM service refuses it too, but say it before launching
        problem = unreadable_problem(ipam)
        if problem is not None:
            raise corrupt(store.path, problem)
    if ipam is not None and ipam.ring is not None:
        ring = Ring.decode_untrusted(ipam.ring, ipam.peer_name)
        size = ring.end - ring.start
        ipam_range = IPv4Network((ring.start, 33 - size.bit_length()))
    elif ipam is not None:
        ipam_range = launch_range
    return Persisted(
        ipalloc_range=launch_range,
        default_subnet=_network(store.get_meta(KEY_SUBNET)),
        encrypted=None if encrypted is None else encrypted == "yes",
        ipam_range=ipam_range,
        ipam_peer=None if ipam is None else ipam.peer_name,
        addresses=0 if ipam is None else sum(len(r.cidrs) for r in ipam.owned.values()),
        holders=0 if ipam is None else len(ipam.owned),
    )


def read_file(path: Path) -> Persisted | None:
    """:func:`read` of the database at ``path`` opened read-only; None if there is none.
    CorruptDatabase (one line naming the file) if it cannot be read back."""
    store = Store.open_readonly(path)
    if store is None:
        return None
    with store:
        return read(store)


def record(store: Store, config: RouterConfig) -> None:
    """Record this launch's settings for a later ``--resume`` (never the password)."""
    subnet = config.ipalloc_default_subnet
    store.set_meta(KEY_RANGE, str(config.ipalloc_range))
    store.set_meta(KEY_SUBNET, "" if subnet is None else str(subnet))
    store.set_meta(KEY_ENCRYPTED, "yes" if config.mesh.password is not None else "no")


def record_or_warn(store: Store, config: RouterConfig) -> str | None:
    """:func:`record`; the reason if the store refused (the router runs on)."""
    try:
        record(store, config)
    except StoreError as exc:
        return f"cannot record the launch settings for --resume: {exc}"
    return None


def resolve(config: RouterConfig, persisted: Persisted | None, *, range_given: bool,
            subnet_given: bool) -> tuple[RouterConfig, list[str]]:
    """The configuration to run, and the one-line notices to print (module doc)."""
    if persisted is None:
        return config, []
    notices: list[str] = []
    password = config.mesh.password is not None
    if config.mesh.resume:
        config = _resumed(config, persisted, range_given=range_given,
                          subnet_given=subnet_given)
        if persisted.encrypted and not password:
            raise ConfigError(
                "--resume: this router ran encrypted; give its password again (--password "
                "or WEAVE_PASSWORD; it is never stored), or launch without --resume to run "
                "unencrypted")
    elif persisted.encrypted and not password:
        notices.append("this router ran encrypted before; it now runs WITHOUT encryption "
                       "(no --password or WEAVE_PASSWORD)")
    discarded = _discarded(config, persisted)
    if discarded is not None:
        notices.append(discarded)
    return config, notices


def _resumed(config: RouterConfig, persisted: Persisted, *, range_given: bool,
             subnet_given: bool) -> RouterConfig:
    universe = persisted.ipalloc_range or persisted.ipam_range
    if range_given or universe is None:
        return config
    subnet = config.ipalloc_default_subnet
    if not subnet_given:
        subnet = persisted.default_subnet
    if subnet is not None and not subnet.subnet_of(universe):
        subnet = None
    return replace(config, ipalloc_range=universe, ipalloc_default_subnet=subnet)


def _discarded(config: RouterConfig, persisted: Persisted) -> str | None:
    """The notice that the stored IPAM data will be discarded (None: it is kept)."""
    if persisted.ipam_peer is None or persisted.ipam_range is None:
        return None
    held = (f"{persisted.addresses} address{'es' if persisted.addresses != 1 else ''} of "
            f"{persisted.holders} container{'s' if persisted.holders != 1 else ''}")
    tail = (f"discarding the stored IPAM data ({held}: they keep those addresses, which "
            "IPAM no longer tracks)")
    name = config.mesh.name
    if name is not None and name != persisted.ipam_peer:
        return (f"--name {name} differs from the stored IPAM data's peer "
                f"{persisted.ipam_peer}: {tail}")
    if config.ipalloc_range != persisted.ipam_range:
        return (f"--ipalloc-range {config.ipalloc_range} differs from the stored IPAM data's "
                f"range {persisted.ipam_range}: {tail}")
    return None

