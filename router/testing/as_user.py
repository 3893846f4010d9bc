"""Running the project's own Python modules as another user (``nobody``, ``daemon``).

Tests and benches check that the control API keeps unprivileged local users out, so they
run clients as those users. The checkout (and its venv) may be closed to them: ``mktemp
-d`` makes a 0700 directory, as CI's fresh clone is. So the client starts as root, loads
its module with everything that imports, and only then gives up root and runs it::

    python -m router.testing.as_user nobody MODULE ARGS...   # as ``python -m MODULE ARGS``

:func:`argv` builds that command line.
"""

from __future__ import annotations

import grp
import importlib
import importlib.util
import os
import pwd
import sys

USERS = {"nobody": "nogroup", "daemon": "daemon"}  # user -> its group
# modules the standard library imports lazily, on first use (host names: idna)
LAZY = ("encodings.idna",)


def argv(user: str, module: str, *args: str) -> list[str]:
    """The command that runs ``python -m module args`` as ``user``."""
    if user not in USERS:
        raise ValueError(f"unknown user {user!r}")
    return [sys.executable, "-m", __name__, user, module, *args]


def _drop_to(user: str) -> None:
    uid, gid = pwd.getpwnam(user).pw_uid, grp.getgrnam(USERS[user]).gr_gid
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def main(words: list[str]) -> None:
    user, module, *args = words
    for name in (*LAZY, module):  # the module and what it imports, read as root
        importlib.import_module(name)
    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.loader is not None and spec.origin is not None
    code = spec.loader.get_code(module)  # type: ignore[attr-defined]
    _drop_to(user)
    sys.argv = [spec.origin, *args]
    exec(code, {"__name__": "__main__", "__file__": spec.origin, "__spec__": spec})


if __name__ == "__main__":
    main(sys.argv[1:])
