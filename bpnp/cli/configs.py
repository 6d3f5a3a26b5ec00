"""Config files composed by concern.

A config file may start with ``compose: [FILE, ...]``: those files (relative to it, and composing in
turn) are applied in order, then the file's own settings, as Hydra's defaults list. The parts live
in ``configs/data``, ``configs/model``, ``configs/trainer`` and ``configs/logging``; an experiment is
a compose list plus what it changes. Merging is jsonargparse's, as for several ``--config`` files:
sections merge key by key, a list or a dict-typed value is replaced whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

COMPOSE = "compose"


def _is_file(value: str | Path) -> bool:
    """Whether ``value`` names a file (a YAML text given to ``--config`` does not)."""
    try:
        return Path(value).is_file()
    except (OSError, ValueError):  # a name too long, or with a NUL
        return False


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: not valid YAML ({e})") from None


def config_args(path: str | Path, _seen: tuple[Path, ...] = ()) -> list[str]:
    """``--config`` arguments equivalent to the file ``path``, its composition expanded (the file's own
    settings are passed as YAML text). A path that is not a file is passed on as it is.

    Raises:
        FileNotFoundError: a composed file that does not exist, naming the file that lists it.
        ValueError: a malformed ``compose`` entry or a cycle.
    """
    p = Path(path)
    if not _is_file(p):
        return ["--config", str(path)]
    content = _read(p)
    if not isinstance(content, dict) or COMPOSE not in content:
        return ["--config", str(path)]
    if p.resolve() in _seen:
        raise ValueError(f"{p}: composes itself (through {' -> '.join(map(str, _seen))})")
    parts = content.pop(COMPOSE)
    if not (isinstance(parts, list) and all(isinstance(x, str) for x in parts)):
        raise ValueError(
            f"{p}: '{COMPOSE}' must be a list of config files relative to {p.parent}, got {parts!r}"
        )
    out: list[str] = []
    for part in parts:
        q = p.parent / part
        if not _is_file(q):
            raise FileNotFoundError(f"{p}: composed config {part} not found (looked for {q})")
        out += config_args(q, (*_seen, p.resolve()))
    if content:
        out += ["--config", yaml.safe_dump(content, sort_keys=False)]
    return out


def expand_configs(args: list[str]) -> list[str]:
    """``args`` with every ``--config FILE`` (or ``--config=FILE``) expanded by :func:`config_args`."""
    out: list[str] = []
    k = 0
    while k < len(args):
        arg = args[k]
        if arg == "--config" and k + 1 < len(args):
            out += config_args(args[k + 1])
            k += 2
            continue
        if arg.startswith("--config="):
            out += config_args(arg.split("=", 1)[1])
        else:
            out.append(arg)
        k += 1
    return out


def composed_section(path: str | Path, key: str) -> dict[str, Any] | None:
    """The ``key`` section of a config file with its composition applied (later files replace a key
    of the section whole, as jsonargparse does for a data module's values), or None without one."""
    section: dict[str, Any] | None = None
    args = config_args(path)
    for value in args[1::2]:
        content = _read(Path(value)) if _is_file(value) else yaml.safe_load(value)
        part = content.get(key) if isinstance(content, dict) else None
        if isinstance(part, dict):
            section = {**(section or {}), **part}
    return section
