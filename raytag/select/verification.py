"""Which test metrics a ``select --verify`` result holds: graph targets are scored by AP and F1,
text targets by accuracy and loss. No ray."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def verification_metrics(verifies: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, bool]]:
    """``(key, label, higher is better)`` of the test metrics the verifications hold, the
    primary one first."""
    if any("test_ap" in entry for verify in verifies for entry in verify.values()):
        return [("test_ap", "test AP", True), ("test_f1", "test F1", True)]
    return [("test_accuracy", "test accuracy", True), ("test_loss", "test loss", False)]
