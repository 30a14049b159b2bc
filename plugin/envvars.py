"""Whole numbers and flags read from environment variables: one-line errors
naming the variable. A leaf module: :mod:`plugin.config` and the modules
whose own settings it checks at start (:mod:`plugin.dns.store`) both use it."""
from __future__ import annotations


def env_int(env, name: str, default: int, lo: int, hi: int) -> int:
    """The whole number ``lo..hi`` in variable ``name``; empty or unset -> ``default``.

    Raises ValueError naming the variable for anything else."""
    value = env.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value, 10)
    except ValueError:
        number = None
    if number is None or not lo <= number <= hi:
        raise ValueError(f"invalid {name} {value!r}: allowed a whole number {lo}..{hi}")
    return number


def flag(env, name: str, default: bool) -> bool:
    """``1``/``0`` (also true/false, yes/no) -> bool; empty or unset -> ``default``.

    Raises ValueError naming the variable for anything else."""
    value = env.get(name, "").strip().lower()
    if not value:
        return default
    if value in ("1", "true", "yes"):
        return True
    if value in ("0", "false", "no"):
        return False
    raise ValueError(f"invalid {name} {value!r}: allowed 1 or 0")
