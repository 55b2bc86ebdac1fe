"""Privacy helpers: secrets that never print, and keyed customer pseudonyms.

Two rules hold for everything meant for people (log lines, runbook pages,
tickets, chat) rather than for the systems that act on a customer:

* a secret (broker password, control token, pseudonym key) is held in a
  :class:`Secret`, whose ``repr``/``str``/``format`` are masked, so it cannot
  leak through a log line, a traceback's locals or a settings dump;
* a customer id appears only as its **pseudonym**: a keyed HMAC-SHA256, truncated,
  prefixed with the key's version so that a rotated key is recognisable.
  Whoever holds the key can compute the pseudonym of an id to find its log lines;
  nobody can go from a pseudonym back to the id without the key.

>>> key = b"k" * 32
>>> p = pseudonym("cust-000042", key, "v1")
>>> p.startswith("v1:") and len(p) == 3 + DIGEST_HEX and "cust-000042" not in p
True
>>> p == pseudonym("cust-000042", key, "v1") != pseudonym("cust-000042", key, "v2")
True
>>> Secret("hunter2")
Secret('********')
>>> f"{Secret('hunter2')}"
'********'
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from schemas.codec import mask_pans
from schemas.errors import ConfigError

T = TypeVar("T", str, bytes)

#: Hex digits of HMAC-SHA256 kept in a pseudonym (80 bits: collisions are negligible
#: for any portfolio, and the string stays short enough for a log line).
DIGEST_HEX = 20

#: Shortest accepted pseudonym key, in bytes.
MIN_KEY_BYTES = 16

_VERSION = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,31}")
_MASK = "********"


class Secret(Generic[T]):
    """A value that must never be printed: masked ``repr``, ``str`` and ``format``.

    Call :meth:`reveal` at the one place the value is handed to the library that
    needs it. Two secrets compare in constant time. Pickling is refused, so a
    secret cannot leave the process by accident; ``copy``/``deepcopy`` share it.
    """

    __slots__ = ("_value",)

    def __init__(self, value: T) -> None:
        self._value: T = value

    def reveal(self) -> T:
        """The secret value itself (hand it to a library, never to a logger)."""
        return self._value

    def __repr__(self) -> str:
        return f"Secret({_MASK!r})"

    def __str__(self) -> str:
        return _MASK

    def __format__(self, spec: str) -> str:
        return _MASK

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Secret):
            return NotImplemented
        return hmac.compare_digest(_as_bytes(self._value), _as_bytes(other._value))

    def __hash__(self) -> int:
        return hash((Secret, hashlib.sha256(_as_bytes(self._value)).digest()))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __copy__(self) -> Secret[T]:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Secret[T]:
        return self

    def __reduce__(self) -> Any:
        raise TypeError("a Secret is never pickled")


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode() if isinstance(value, str) else value


def read_secret_file(path: str | Path, *, what: str) -> bytes:
    """The bytes of a secret file, without one trailing newline.

    ``what`` names the setting in the error message (never the content).
    """
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{what} {str(path)!r}: cannot read: {exc.strerror or exc}") from None
    if data.endswith(b"\r\n"):
        data = data[:-2]
    elif data.endswith(b"\n"):
        data = data[:-1]
    if not data:
        raise ConfigError(f"{what} {str(path)!r}: the file is empty")
    return data


def check_key_version(version: str) -> str:
    """A pseudonym key version: 1-32 letters, digits, ``.``, ``_`` or ``-``.

    >>> check_key_version("2026-01")
    '2026-01'
    """
    if not _VERSION.fullmatch(version):  # not match: "$" lets a trailing "\n" through
        raise ConfigError(f"pseudonym key version {version!r}: expected 1-32 letters, digits, "
                          "'.', '_' or '-' (no ':')")
    return version


def pseudonym(customer_id: str, key: bytes, key_version: str) -> str:
    """The keyed pseudonym of ``customer_id``: ``"<key_version>:<hex>"``.

    The hex part is HMAC-SHA256 over the UTF-8 id, truncated to
    :data:`DIGEST_HEX` digits. It is stable for one key and version, differs
    across keys, and never contains the raw id: in the rare case the truncated
    digest would (a very short id, say ``"7"``), a counter is mixed in, still
    deterministically.
    """
    if not customer_id:
        raise ValueError("pseudonym of an empty customer id")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"pseudonym key shorter than {MIN_KEY_BYTES} bytes")
    check_key_version(key_version)
    message = customer_id.encode("utf-8", "surrogatepass")
    # The version is bound into the MAC, so one key under two versions never agrees.
    prefix = key_version.encode() + b"\x00"
    counter = 0
    while True:
        tail = b"" if counter == 0 else b"\x00" + str(counter).encode()
        digest = hmac.new(key, prefix + message + tail, hashlib.sha256).hexdigest()[:DIGEST_HEX]
        if customer_id not in digest:
            return f"{key_version}:{digest}"
        counter += 1


@dataclass(frozen=True)
class PseudonymKey:
    """A versioned pseudonym key; call it on a customer id.

    >>> k = PseudonymKey(Secret(b"0123456789abcdef"), "v7")
    >>> k("c-1") == pseudonym("c-1", b"0123456789abcdef", "v7")
    True
    >>> k
    PseudonymKey(key=Secret('********'), version='v7')
    """

    key: Secret[bytes]
    version: str
    ephemeral: bool = field(default=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        check_key_version(self.version)
        if len(self.key.reveal()) < MIN_KEY_BYTES:
            raise ConfigError(f"pseudonym key (version {self.version}) is shorter than "
                              f"{MIN_KEY_BYTES} bytes")

    def __call__(self, customer_id: str | None) -> str:
        """The pseudonym of ``customer_id`` (``"-"`` when there is none)."""
        if not customer_id:
            return "-"
        return pseudonym(customer_id, self.key.reveal(), self.version)

    @classmethod
    def generate(cls) -> PseudonymKey:
        """A random key for this process only (version ``ephemeral``).

        Used when no key is configured: log lines still never carry a customer
        id, but their pseudonyms cannot be correlated across restarts.
        """
        return cls(Secret(secrets.token_bytes(32)), "ephemeral", ephemeral=True)

    @classmethod
    def from_file(cls, path: str | Path, version: str) -> PseudonymKey:
        """The key stored in ``path`` (raw bytes; one trailing newline ignored)."""
        data = read_secret_file(path, what="RISKWATCH_PSEUDONYM_KEY_FILE")
        return cls(Secret(data), check_key_version(version))

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> PseudonymKey | None:
        """``RISKWATCH_PSEUDONYM_KEY_FILE`` and ``RISKWATCH_PSEUDONYM_KEY_VERSION``
        (default ``v1``); None when no key file is configured."""
        env = dict(os.environ) if env is None else env
        path = env.get("RISKWATCH_PSEUDONYM_KEY_FILE")
        if not path:
            return None
        return cls.from_file(path, env.get("RISKWATCH_PSEUDONYM_KEY_VERSION") or "v1")


def redact(text: str, customer_id: str | None, key: PseudonymKey) -> str:
    """``text`` (an exception message, say) fit for a log line: the customer id
    replaced by its pseudonym and card-number-like digit runs masked.

    >>> k = PseudonymKey(Secret(b"0123456789abcdef"), "v1")
    >>> out = redact("no state for 'cust-9' card 4111111111111111", "cust-9", k)
    >>> "cust-9" in out, "411111******1111" in out, out.startswith("no state for 'v1:")
    (False, True, True)
    >>> redact("no state for '5500000000000004'", "5500000000000004", k) == (
    ...     f"no state for '{k('5500000000000004')}'")
    True
    """
    # Mask first: an id made of digits must not break up a card number before masking.
    text = mask_pans(text.encode("utf-8", "replace")).decode("utf-8", "replace")
    if customer_id:
        alias = key(customer_id)
        text = text.replace(customer_id, alias)
        # An id with a card-number-like digit run was masked above: find it masked.
        masked = mask_pans(customer_id.encode("utf-8", "replace")).decode("utf-8", "replace")
        if masked != customer_id:
            whole = re.compile(rf"(?<![0-9*]){re.escape(masked)}(?![0-9*])")
            text = whole.sub(lambda _: alias, text)
    return text


def describe_error(exc: BaseException, customer_id: str | None, key: PseudonymKey) -> str:
    """``"<Type>: <message>"`` of ``exc`` with :func:`redact` applied to the message."""
    return f"{type(exc).__name__}: {redact(str(exc), customer_id, key)}"
