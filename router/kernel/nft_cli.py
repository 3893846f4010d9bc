"""The real :class:`~router.kernel.nft.NftPort`: the ``nft`` binary (Debian's
``nftables``) with JSON in and out, run in the router's network namespace.

``nft -j -f -`` takes a batch on stdin and applies it as one transaction;
``nft -j list table F N`` prints a table. A failure is a KernelError with nft's own
first error line (``Error: Could not process rule: No such file or directory``).
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Sequence

import trio

from router.errors import KernelError
from router.kernel.nft import (
    Command,
    TableRef,
    TableView,
    delete_batch,
    parse_listing,
    replace_batch,
)

NFT_TIMEOUT = 10.0  # seconds one nft run may take


def nft_binary() -> str | None:
    """Where ``nft`` is (on ``PATH``, else /usr/sbin or /sbin), or None."""
    return shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if shutil.which(p)), None)


def open_nft() -> tuple[NftCli | None, str]:
    """The ``nft`` binary as the router's one nftables port (its table, the fastdp bridge
    filter, the VXLAN guard), or None and why not (the router then runs without them)."""
    try:
        return NftCli(), ""
    except KernelError as exc:
        return None, str(exc)


class NftCli:
    """nftables through ``nft`` (raises KernelError(ENOENT) at once if it is missing)."""

    def __init__(self, binary: str | None = None) -> None:
        found = nft_binary() if binary is None else shutil.which(binary)
        if found is None:
            raise KernelError(errno.ENOENT,
                              f"{binary or 'nft'} not found (install Debian's nftables)")
        self.binary = found

    async def _run(self, args: Sequence[str], stdin: bytes = b"") -> tuple[int, str, str]:
        with trio.fail_after(NFT_TIMEOUT):
            proc = await trio.run_process([self.binary, "-j", *args], stdin=stdin,
                                          capture_stdout=True, capture_stderr=True,
                                          check=False)
        return proc.returncode, proc.stdout.decode(errors="replace"), \
            proc.stderr.decode(errors="replace")

    async def replace_table(self, table: TableRef, commands: Sequence[Command]) -> None:
        code, _, err = await self._run(["-f", "-"],
                                       json.dumps(replace_batch(table, commands)).encode())
        if code != 0:
            raise KernelError(errno.EINVAL, f"nft: cannot set table {table}: {_first(err)}")

    async def read_table(self, table: TableRef) -> TableView | None:
        code, out, err = await self._run(["list", "table", table.family, table.name])
        if code != 0:
            if "No such file or directory" in err:
                return None
            raise KernelError(errno.EIO, f"nft: cannot list table {table}: {_first(err)}")
        return parse_listing(json.loads(out))

    async def delete_table(self, table: TableRef) -> bool:
        code, _, err = await self._run(["-f", "-"], json.dumps(delete_batch(table)).encode())
        if code == 0:
            return True
        if "No such file or directory" in err:
            return False
        raise KernelError(errno.EIO, f"nft: cannot delete table {table}: {_first(err)}")


def _first(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    return lines[0].strip() if lines else "failed"
