"""The risk policy: versioned thresholds and switches, validated with clear errors.

A policy is a YAML (or JSON) document. Unknown keys are errors (a typo must not
silently fall back to a default), and every error names the field.

>>> p = load_policy_text("version: v7\\nlarge_transaction: {multiple: 5.0}")
>>> p.version, p.large_transaction.multiple, p.large_transaction.min_history
('v7', 5.0, 10)
>>> load_policy_text("version: v7\\nlarge_transaction: {multple: 5.0}")
Traceback (most recent call last):
...
schemas.errors.PolicyError: policy <text>: Object contains unknown field `multple` - at `$.large_transaction`
"""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Annotated, Any

import msgspec
import yaml
from msgspec import Meta, Struct

from alerts.actions import ActionPolicy
from alerts.grades import DEFAULT_LINES, DEFAULT_TIERS, EarlyWarningLines, GradePolicy, TierPolicy
from alerts.limits import LimitPolicy
from detectors.behaviour import DEFAULT_CONFIG as DEFAULT_BEHAVIOUR
from detectors.behaviour import BehaviourConfig
from detectors.delinquency import DEFAULT_CONFIG as DEFAULT_DELINQUENCY
from detectors.delinquency import DelinquencyConfig
from detectors.scoring import DEFAULT_CONFIG as DEFAULT_SCORING
from detectors.scoring import ScoreConfig
from detectors.segments import SegmentConfig
from schemas.errors import PolicyError

_EPOCH_ORDINAL = dt.date(1970, 1, 1).toordinal()
_CFG: dict[str, Any] = {"kw_only": True, "frozen": True, "forbid_unknown_fields": True}


#: A policy datetime: with a UTC offset (event times are aware; a naive one is refused).
AwareDatetime = Annotated[dt.datetime, Meta(tz=True)]


#: Most ended crisis windows a policy keeps deferred (``crisis.deferred``).
MAX_DEFERRED = 32


def _epoch_day(at: dt.datetime) -> int:
    """The UTC epoch day of an aware datetime (day numbering is UTC everywhere).

    >>> _epoch_day(dt.datetime(2026, 3, 1, 20, tzinfo=dt.timezone(dt.timedelta(hours=-5))))
    20514
    >>> dt.date(1970, 1, 1) + dt.timedelta(days=20514)  # 2026-03-02T01:00Z
    datetime.date(2026, 3, 2)
    """
    return at.astimezone(dt.UTC).date().toordinal() - _EPOCH_ORDINAL


class CrisisWindow(Struct, **_CFG):
    """An ended crisis window whose payment deferral is kept: ``[start, end)``.

    >>> parse_policy({"crisis": {"deferred": [{"start": "2026-03-02T00:00:00Z",
    ...                                        "end": "2026-03-01T00:00:00Z"}]}})
    Traceback (most recent call last):
    ...
    schemas.errors.PolicyError: policy <document>: start must be before end - at `$.crisis.deferred[0]`
    """

    start: AwareDatetime
    end: AwareDatetime

    def __post_init__(self) -> None:
        if not self.start < self.end:
            raise ValueError("start must be before end")


class CrisisMode(Struct, **_CFG):
    """Crisis mode: payment deferral for everyone and no limit cuts, in a window.

    ``start`` and ``end`` need a UTC offset (``2026-03-01T00:00:00Z``): event times
    are compared with them. ``deferred`` holds ended crisis windows whose deferral is
    kept (switching crisis mode off moves the window there, so the days it deferred
    stay deferred); at most :data:`MAX_DEFERRED`.

    >>> load_policy_text("crisis: {active: true, start: 2026-03-01T00:00:00}")
    Traceback (most recent call last):
    ...
    schemas.errors.PolicyError: policy <text>: Expected `datetime` with a timezone component - at `$.crisis.start`
    >>> load_policy_text("crisis: {start: 2026-03-02T00:00:00Z, end: 2026-03-01T00:00:00Z}")
    Traceback (most recent call last):
    ...
    schemas.errors.PolicyError: policy <text>: crisis.start must be before crisis.end - at `$.crisis`
    """

    active: bool = False
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    defer_payments: bool = True
    suspend_limit_cuts: bool = True
    deferred: Annotated[tuple[CrisisWindow, ...], Meta(max_length=MAX_DEFERRED)] = ()

    def __post_init__(self) -> None:
        if self.start is not None and self.end is not None and not self.start < self.end:
            raise ValueError("crisis.start must be before crisis.end")

    def in_force(self, at: dt.datetime) -> bool:
        """Whether crisis mode applies at event time ``at``."""
        if not self.active:
            return False
        if self.start is not None and at < self.start:
            return False
        return not (self.end is not None and at >= self.end)

    def switched_on(self, now: dt.datetime, *, since: dt.datetime | None = None) -> CrisisMode:
        """Crisis mode switched on at ``now``: a window from ``now``, open-ended.

        A window this policy still holds is ended first (:meth:`switched_off`), so
        the days it deferred stay deferred.
        """
        base = self.switched_off(now, since=since) if self.active else self
        return msgspec.structs.replace(base, active=True, start=now, end=None)

    def switched_off(self, now: dt.datetime, *, since: dt.datetime | None = None) -> CrisisMode:
        """Crisis mode switched off at ``now``: the window ends at ``now`` (or its own
        earlier end) and, if it deferred payments, moves to ``deferred``.

        ``since`` is when crisis mode was switched on, for a window without ``start``
        (without either, nothing is known to have been deferred). Past
        :data:`MAX_DEFERRED` windows the two oldest are joined: the days between them
        are deferred too (an error in the customers' favour, never against them).

        >>> on = CrisisMode(active=True, start=dt.datetime(2026, 3, 1, tzinfo=dt.UTC))
        >>> off = on.switched_off(dt.datetime(2026, 3, 9, tzinfo=dt.UTC))
        >>> off.active, off.start, [(w.start.day, w.end.day) for w in off.deferred]
        (False, None, [(1, 9)])
        """
        start = self.start if self.start is not None else since
        end = now if self.end is None else min(self.end, now)
        deferred = list(self.deferred)
        if self.active and self.defer_payments and start is not None and start < end:
            deferred.append(CrisisWindow(start=start, end=end))
        deferred.sort(key=lambda w: (w.start, w.end))
        while len(deferred) > MAX_DEFERRED:
            first, second = deferred[0], deferred[1]
            deferred[:2] = [CrisisWindow(start=first.start, end=max(first.end, second.end))]
        return msgspec.structs.replace(self, active=False, start=None, end=None,
                                       deferred=tuple(deferred))


class LargeTransactionRule(Struct, **_CFG):
    """A single transaction far above the customer's usual amount."""

    enabled: bool = True
    multiple: Annotated[float, Meta(gt=1.0)] = 12.0
    min_history: Annotated[int, Meta(ge=1)] = 10
    floor_minor: Annotated[int, Meta(ge=0)] = 150_000
    half_life_events: Annotated[float, Meta(gt=0)] = 20.0


class AnomalyRule(Struct, **_CFG):
    """The global anomaly model (River HalfSpaceTrees on scaled transaction features)."""

    enabled: bool = True
    seed: int = 0
    #: Flag scores above this running quantile (a ceiling on the flag rate).
    quantile: Annotated[float, Meta(gt=0.5, lt=1.0)] = 0.997
    #: Never flag below this score.
    min_score: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.7


class Policy(Struct, **_CFG):
    """The whole risk policy in force."""

    version: Annotated[str, Meta(min_length=1, max_length=64)] = "default"
    allowed_lateness_days: Annotated[int, Meta(ge=0, le=365)] = 35
    crisis: CrisisMode = CrisisMode()
    large_transaction: LargeTransactionRule = LargeTransactionRule()
    behaviour: BehaviourConfig = DEFAULT_BEHAVIOUR
    anomaly: AnomalyRule = AnomalyRule()
    delinquency: DelinquencyConfig = DEFAULT_DELINQUENCY
    actions: ActionPolicy = ActionPolicy()
    segments: SegmentConfig = SegmentConfig()
    scoring: ScoreConfig = DEFAULT_SCORING
    #: Bands tuned on generated portfolios (bench/quality.py): fewer false escalations.
    grades: GradePolicy = GradePolicy(medium=350, high=650, critical=800)
    tiers: TierPolicy = DEFAULT_TIERS
    early_warning: EarlyWarningLines = DEFAULT_LINES
    limits: LimitPolicy = LimitPolicy()
    #: Event-time slack before a partition's watermark sweep treats a due date as passed.
    sweep_lateness_hours: Annotated[int, Meta(ge=0, le=24 * 35)] = 6
    #: Version of the models the policy expects (carried on every output).
    model_version: Annotated[str, Meta(max_length=64)] = "rules-1"

    def pauses(self) -> list[tuple[int, int | None]]:
        """Global DPD-clock pauses, as UTC epoch-day intervals ``[start, end)``: the
        ended crisis windows kept deferred, and the crisis window (when it defers
        payments; without ``start`` from day 0, without ``end`` open-ended).

        >>> p = load_policy_text("crisis: {active: true, start: '2026-03-15T10:00:00Z', "
        ...     "deferred: [{start: '2026-01-01T00:00:00-05:00', end: '2026-01-10T00:00:00Z'}]}")
        >>> p.pauses()
        [(20454, 20463), (20527, None)]
        """
        crisis = self.crisis
        out: list[tuple[int, int | None]] = [
            (_epoch_day(w.start), _epoch_day(w.end)) for w in crisis.deferred]
        if crisis.active and crisis.defer_payments:
            start = _epoch_day(crisis.start) if crisis.start else 0
            end = _epoch_day(crisis.end) if crisis.end else None
            out.append((start, end))
        return out


def _content_version(policy: Policy) -> Policy:
    """The built-in default, versioned by its content: a release that changes a default
    publishes under a new version instead of clashing with the old one."""
    import hashlib

    body = msgspec.to_builtins(policy)
    body.pop("version", None)
    digest = hashlib.sha256(msgspec.json.encode(body, order="sorted")).hexdigest()[:10]
    return msgspec.structs.replace(policy, version=f"default-{digest}")


#: The built-in policy (version ``default-<content hash>``).
DEFAULT_POLICY = _content_version(Policy())


def parse_policy(document: Any, *, source: str = "<document>") -> Policy:
    """Validate a parsed policy document (a mapping)."""
    if not isinstance(document, dict):
        raise PolicyError(f"policy {source}: expected a mapping, got {type(document).__name__}")
    problem = _unpublishable(document)  # before msgspec, which may quote a bad key
    if problem is not None:
        raise PolicyError(f"policy {source}: {problem}")
    try:
        policy = msgspec.convert(document, Policy, strict=False)
    except (msgspec.ValidationError, ValueError) as exc:
        raise PolicyError(f"policy {source}: {exc}") from exc
    problem = _unpublishable(msgspec.to_builtins(policy))
    if problem is not None:
        raise PolicyError(f"policy {source}: {problem}")
    return policy


def _unpublishable(document: Any) -> str | None:
    """What in a policy (as builtins) no worker could read back, naming the field: a
    non-finite float (JSON has none: it would be published as ``null``) or a string
    that is not encodable as UTF-8 (a lone surrogate).

    >>> _unpublishable({"a": [1.0, {"b": float("nan")}]})
    'not a finite number - at `$.a[1].b`'
    >>> _unpublishable({"v": "x" + chr(0xD800)})
    'not encodable as UTF-8 text - at `$.v`'
    >>> _unpublishable({"a": {"x" + chr(0xD800): 1}})
    'a key not encodable as UTF-8 text - at `$.a`'
    """
    stack: list[tuple[str, Any, str]] = [("$", document, "")]
    while stack:
        path, value, what = stack.pop()
        if isinstance(value, float) and not math.isfinite(value):
            return f"not a finite number - at `{path}`"
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return f"{what}not encodable as UTF-8 text - at `{path}`"
        elif isinstance(value, dict):
            for key, item in reversed(value.items()):
                stack.append((f"{path}.{key}", item, ""))
                stack.append((path, key, "a key "))
        elif isinstance(value, list | tuple):
            stack.extend((f"{path}[{i}]", item, "")
                         for i, item in reversed(list(enumerate(value))))
    return None


def load_policy_text(text: str, *, source: str = "<text>") -> Policy:
    """Parse and validate policy YAML text."""
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise PolicyError(f"policy {source}: not valid YAML: {exc}") from exc
    return parse_policy(document if document is not None else {}, source=source)


def load_policy(path: str | Path | None) -> Policy:
    """Load a policy file, or the default policy when ``path`` is None."""
    if path is None:
        return DEFAULT_POLICY
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise PolicyError(f"policy {path}: cannot read: {exc}") from exc
    return load_policy_text(text, source=str(path))


def publishable_document(policy: Policy, *, source: str = "<policy>") -> dict[str, Any]:
    """``policy``'s document, checked to be what every worker reads back as ``policy``
    (a policy built in code skips :func:`parse_policy`'s checks). Raises
    :class:`PolicyError` naming the field.

    >>> inf = msgspec.structs.replace(DEFAULT_POLICY.large_transaction, multiple=float("inf"))
    >>> publishable_document(msgspec.structs.replace(DEFAULT_POLICY, large_transaction=inf))
    Traceback (most recent call last):
    ...
    schemas.errors.PolicyError: policy <policy>: not a finite number - at `$.large_transaction.multiple`
    """
    problem = _unpublishable(msgspec.to_builtins(policy))
    if problem is not None:
        raise PolicyError(f"policy {source}: {problem}")
    document = policy_document(policy)
    if parse_policy(document, source=source) != policy:
        raise PolicyError(f"policy {source}: does not read back as itself")
    return document


def policy_document(policy: Policy) -> dict[str, Any]:
    """A policy as a plain JSON document (for publishing, diffing and auditing).

    Normalised through JSON (tuples become lists), so a document read back from the
    ``risk-policy`` topic compares equal to the policy it was made from.
    """
    return msgspec.json.decode(msgspec.json.encode(policy))
