"""The typed results of rollout operations: a guarded promotion's report and an interleaved ranking."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

__all__ = ["InterleavedRanking", "PromotionReport"]

_REPORT_KEYS = {"model": "model", "from": "from_version", "to": "to_version", "samples": "samples"}
_REPORT_KEYS |= {"max_abs_diff": "max_abs_diff", "label_agreement": "label_agreement", "mismatch": "mismatch"}
_REPORT_KEYS |= {"reason": "reason"}


@dataclass(frozen=True, slots=True, kw_only=True)
class PromotionReport:
    """What a guarded promotion compared and decided.

    It also reads like the dict ``promote()`` returned before (``report["from"]``, ``report["reason"]``);
    :meth:`to_dict` gives that dict, which ``PromotionRefusedError.report`` carries.
    """

    model: str
    from_version: int
    """The stable version the candidate was compared with (never a canary or arm a request might draw)."""
    to_version: int
    samples: int
    """Recent real inputs both versions answered."""
    max_abs_diff: float | None = None
    """Largest absolute difference between their numeric outputs (``None``: none to compare)."""
    label_agreement: float | None = None
    """Share of rows that agreed: the argmax of class scores, or labels (``None``: no class or label outputs)."""
    mismatch: str | None = None
    """An output the two versions' answers could not be compared on, and why (another number of axes, text
    against numbers, missing): the candidate answers in another form, and is refused whatever the bounds."""
    reason: str = ""
    """``"within bounds"`` when promoted, else why it was refused."""

    def violations(self, *, max_abs_diff: float | None, min_label_agreement: float | None) -> list[str]:
        """The bounds this comparison breaks, as messages (empty: it may be promoted). A bound that nothing
        could be measured against is broken too (a guard that cannot check must not pass), and so is any
        mismatch."""
        problems = []
        if self.mismatch is not None:
            problems.append(f"the answers differ in form: {self.mismatch}")
        if max_abs_diff is not None:
            if self.max_abs_diff is None:
                problems.append("max abs diff: no numeric output to compare")
            elif self.max_abs_diff > max_abs_diff:
                problems.append(f"max abs diff {self.max_abs_diff:.3g} > {max_abs_diff:g}")
        agreement = self.label_agreement
        if min_label_agreement is not None:
            if agreement is None:
                problems.append("label agreement: no class scores or labels to compare")
            elif agreement < min_label_agreement:
                problems.append(f"label agreement {agreement:.3f} < {min_label_agreement:g}")
        return problems

    def to_dict(self) -> dict[str, Any]:
        """The report as the JSON-ready dict with the keys ``from``, ``to``, ``samples`` ...; a difference
        that is not finite (the candidate answered NaN or infinity where the stable version did not) is the
        string ``"inf"`` there, as strict JSON has no infinity."""
        report = {key: getattr(self, name) for key, name in _REPORT_KEYS.items()}
        for key in ("max_abs_diff", "label_agreement"):
            value = report[key]
            if isinstance(value, float) and not math.isfinite(value):
                report[key] = str(value)
        return report

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, _REPORT_KEYS[key])
        except KeyError:
            raise KeyError(key) from None


@dataclass(frozen=True, slots=True)
class InterleavedRanking:
    """An interleaved result list: item indices (rows of the inputs) in display order, and for each
    position the ranker ("A" or "B") that contributed it."""

    request_id: str
    model: str
    rankers: tuple[int, int]
    order: list[int]
    teams: list[str]
