"""An in-memory :class:`~router.kernel.nft.NftPort` for unit tests: tables as the commands
made them, ``flush_ruleset()`` as ``nft flush ruleset`` does, a switch to fail."""

from __future__ import annotations

import errno
from collections.abc import Sequence

from router.errors import KernelError
from router.kernel.nft import Command, TableRef, TableView, commands_view


class FakeNft:
    def __init__(self) -> None:
        self.tables: dict[TableRef, TableView] = {}
        self.commands: dict[TableRef, list[Command]] = {}
        self.replaced = 0  # replace_table calls that succeeded
        self.reads = 0  # read_table calls (each an nft process on a real host)
        self.fail = False  # every call raises KernelError (nft broken)

    def _check(self) -> None:
        if self.fail:
            raise KernelError(errno.EIO, "nft: fake failure")

    async def replace_table(self, table: TableRef, commands: Sequence[Command]) -> None:
        self._check()
        self.tables[table] = commands_view(commands)
        self.commands[table] = list(commands)
        self.replaced += 1

    async def read_table(self, table: TableRef) -> TableView | None:
        self._check()
        self.reads += 1
        return self.tables.get(table)

    async def delete_table(self, table: TableRef) -> bool:
        self._check()
        self.commands.pop(table, None)
        return self.tables.pop(table, None) is not None

    def flush_ruleset(self) -> None:
        """``nft flush ruleset``: every table gone."""
        self.tables.clear()
        self.commands.clear()

    def flush_chain(self, table: TableRef, chain: str) -> None:
        """``nft flush chain ...``: the chain stays, its rules go."""
        view = self.tables[table]
        self.tables[table] = TableView(view.chains,
                                       tuple(r for r in view.rules if r.chain != chain))
