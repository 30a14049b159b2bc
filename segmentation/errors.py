"""Errors of the policy model.

Every error is a :class:`PolicyError` (a ``ValueError``) whose message is one
human-readable line that names what was wrong: the option key and its value,
or the rule text. The plugin returns that line to Docker as ``{"Err": ...}``
and the CLI prints it to stderr, so it must never span lines or carry
control characters.
"""

from __future__ import annotations

_MAX_SHOWN = 200


def shown(value: object) -> str:
    """Render a user-supplied value for a one-line message.

    Non-printable characters are escaped (a newline becomes ``\\n``) and very
    long values are shortened, so a message always stays one readable line.
    """
    text = str(value)
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return text


class PolicyError(ValueError):
    """A policy input (option, rule, segment name) is invalid."""


class OptionError(PolicyError):
    """A network option (``-o KEY=VALUE``) is unknown or has a bad value.

    ``key`` is the option key, ``value`` the value as given (``None`` for an
    unknown key) and ``allowed`` says what would have been accepted.
    """

    def __init__(self, key: str, value: object, allowed: str, *, unknown: bool = False):
        self.key = key
        self.value = value
        self.allowed = allowed
        self.unknown = unknown
        if unknown:
            message = f"unknown option {shown(key)}: {allowed}"
        else:
            message = f"invalid value '{shown(value)}' for option {key}: {allowed}"
        super().__init__(message)

    @classmethod
    def unknown_key(cls, key: str, known: tuple[str, ...]) -> "OptionError":
        """The error for a ``secnet.*`` key that secnet does not know."""
        return cls(key, None, "allowed options are " + ", ".join(known), unknown=True)

    @classmethod
    def misspelt_key(cls, key: str, meant: str, known: tuple[str, ...]) -> "OptionError":
        """The error for a key that is not ``secnet.*`` but was meant as ``meant``."""
        hint = f"did you mean {meant}? " if meant in known else "options of secnet start with 'secnet.': "
        return cls(key, None, hint + "allowed options are " + ", ".join(known), unknown=True)


class RuleError(PolicyError):
    """An allow rule does not follow the grammar or makes no sense.

    ``rule`` is the rule text as given, ``reason`` what exactly is wrong.
    """

    def __init__(self, rule: str, reason: str):
        self.rule = rule
        self.reason = reason
        super().__init__(f"invalid rule '{shown(rule)}': {reason}")
