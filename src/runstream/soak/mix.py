"""The fault mix: which scenario each iteration of a virtual client plays.

``--mix "disconnect=0.3,stop=0.15,fail=0.15,pubsub_kill=0.05"`` gives each fault a
fraction of the iterations; whatever is left over is played as normal runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    import random


class Scenario(StrEnum):
    """What one iteration does to one run (see :mod:`runstream.soak.scenarios`)."""

    NORMAL = "normal"
    DISCONNECT = "disconnect"
    STOP = "stop"
    FAIL = "fail"
    PUBSUB_KILL = "pubsub_kill"


FAULTS: Final = (Scenario.DISCONNECT, Scenario.STOP, Scenario.FAIL, Scenario.PUBSUB_KILL)
"""The scenarios a mix may name; ``normal`` takes what the faults leave."""

DEFAULT_MIX: Final = "disconnect=0.3,stop=0.15,fail=0.15,pubsub_kill=0.05"

# Fractions are decimal text: 0.3 + 0.7 must not be refused for a rounding error.
_SUM_TOLERANCE: Final = 1e-9


@dataclass(frozen=True, slots=True)
class Mix:
    """The fraction of iterations given to each scenario, ``normal`` included."""

    fractions: dict[Scenario, float]

    def choose(self, rng: random.Random) -> Scenario:
        """Draw one scenario with the mix's probabilities."""
        point = rng.random()
        for scenario, fraction in self.fractions.items():
            point -= fraction
            if point < 0:
                return scenario
        return Scenario.NORMAL  # the floating-point remainder of a mix that sums to 1

    def as_text(self) -> str:
        """The mix as ``--mix`` would take it (faults only, ``normal`` implied)."""
        return ",".join(f"{s.value}={f:g}" for s, f in self.fractions.items() if s in FAULTS)


def parse_mix(text: str) -> Mix:
    """Parse ``name=fraction,...``; ValueError with one readable line when it is wrong.

    Names are the faults (disconnect, stop, fail, pubsub_kill), each at most once; each
    fraction is a number from 0 to 1 and together they may not exceed 1.
    """
    names = ", ".join(s.value for s in FAULTS)
    faults: dict[Scenario, float] = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep:
            raise ValueError(f"expected name=fraction, got {item!r}")
        try:
            scenario = Scenario(name)
        except ValueError:
            scenario = Scenario.NORMAL
        if scenario not in FAULTS:
            raise ValueError(
                f"unknown scenario {name!r}: use {names} (the rest are normal runs)"
            ) from None
        if scenario in faults:
            raise ValueError(f"{name} is given twice")
        try:
            fraction = float(value)
        except ValueError:
            raise ValueError(f"{name}: {value.strip()!r} is not a number") from None
        if not math.isfinite(fraction) or not 0 <= fraction <= 1:
            raise ValueError(f"{name}: {value.strip()} is not a fraction between 0 and 1")
        faults[scenario] = fraction
    total = sum(faults.values())
    if total > 1 + _SUM_TOLERANCE:
        raise ValueError(f"the fractions add up to {total:g}, more than 1")
    fractions = {s: faults.get(s, 0.0) for s in FAULTS}
    fractions[Scenario.NORMAL] = max(0.0, 1.0 - total)
    return Mix(fractions)
