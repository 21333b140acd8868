"""Names that reach metric keys and file paths: groups, input spaces, class sets, registry entries.

A metric key is ``<metric>:<name>`` (``acc_group:hi``) and some names become file names
(``samples_<group>.png``), so a name must survive both: it is one path component that
``<metric>:<name>`` splits back unambiguously. Allowed: letters, digits and ``_ - . +``,
starting with a letter or digit, at most ``MAX_LEN`` characters. An input space's name
prefixes its encoder's tensors (``encoder.<space>.<tensor>``), so it takes no ``.``; it may
hold ``@`` (a frozen backbone's features: ``px8@resnet18``). This module imports nothing
from fedanchors but the errors, so config and the registries can both use it.
"""

from __future__ import annotations

import re

from fedanchors.errors import ConfigError

MAX_LEN = 64
_CHARS = {False: "A-Za-z0-9_.+-", True: "A-Za-z0-9_+@-"}  # space=False: names; True: input spaces
_SHOWN = {False: "'_', '-', '.' or '+'", True: "'_', '-', '+' or '@' (no '.')"}


def name_problem(name: object, space: bool = False) -> str:
    """Why ``name`` cannot be a name (an input space's when ``space``); "" when it can."""
    if not isinstance(name, str):
        return f"not a string ({type(name).__name__})"
    if not name:
        return "empty"
    if len(name) > MAX_LEN:
        return f"{len(name)} characters, more than {MAX_LEN}"
    if ".." in name:
        return "contains '..'"
    chars = _CHARS[space]
    if not re.fullmatch(f"[A-Za-z0-9][{chars}]*", name):
        bad = sorted({c for c in name if not re.fullmatch(f"[{chars}]", c)})
        shown = ", ".join(repr(c) for c in bad) if bad else repr(name[0])
        return f"has {shown}" + ("" if bad else " at the start")
    return ""


def check_name(name: object, key: str, space: bool = False) -> str:
    """``name`` if it is a valid name (an input space's when ``space``), else a one-line
    ConfigError naming ``key``."""
    why = name_problem(name, space)
    if why:
        raise ConfigError(
            f"{key}: {name!r} is not a valid name ({why}); names become metric keys (acc_group:<name>) and "
            f"file names, so use letters, digits, {_SHOWN[space]} (at most {MAX_LEN}), e.g. 'mnist28'"
        )
    return name  # type: ignore[return-value]
