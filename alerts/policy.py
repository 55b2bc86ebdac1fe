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


class CrisisMode(Struct, **_CFG):
    """Crisis mode: payment deferral for everyone and no limit cuts, in a window.

    ``start`` and ``end`` need a UTC offset (``2026-03-01T00:00:00Z``): event times
    are compared with them.

    >>> load_policy_text("crisis: {active: true, start: 2026-03-01T00:00:00}")
    Traceback (most recent call last):
    ...
    schemas.errors.PolicyError: policy <text>: Expected `datetime` with a timezone component - at `$.crisis.start`
    """

    active: bool = False
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None
    defer_payments: bool = True
    suspend_limit_cuts: bool = True

    def in_force(self, at: dt.datetime) -> bool:
        """Whether crisis mode applies at event time ``at``."""
        if not self.active:
            return False
        if self.start is not None and at < self.start:
            return False
        return not (self.end is not None and at >= self.end)


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
        """Global DPD-clock pauses (crisis deferral), as epoch-day intervals."""
        crisis = self.crisis
        if not (crisis.active and crisis.defer_payments):
            return []
        start = crisis.start.date().toordinal() - _EPOCH_ORDINAL if crisis.start else 0
        end = crisis.end.date().toordinal() - _EPOCH_ORDINAL if crisis.end else None
        return [(start, end)]


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
    try:
        return msgspec.convert(document, Policy, strict=False)
    except (msgspec.ValidationError, ValueError) as exc:
        raise PolicyError(f"policy {source}: {exc}") from exc


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


def policy_document(policy: Policy) -> dict[str, Any]:
    """A policy as a plain JSON document (for publishing, diffing and auditing).

    Normalised through JSON (tuples become lists), so a document read back from the
    ``risk-policy`` topic compares equal to the policy it was made from.
    """
    return msgspec.json.decode(msgspec.json.encode(policy))
