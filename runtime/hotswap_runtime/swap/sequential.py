"""Wald's sequential probability ratio test on a disagreement rate (no torch).

Each scored sample either agrees or disagrees. The test weighs H1 "the disagreement rate
is at least ``p1``" (spec.analysis.shadow.maxDisagreement) against H0 "it is at most
``p0 = p1 / 5``" and stops as soon as the evidence crosses a bound:

* refuse when the log-likelihood ratio reaches ``ln((1 - beta) / alpha)``: a revision
  whose true rate is at most ``p0`` is refused with probability at most ``alpha``
  (1%);
* pass when it falls to ``ln(beta / (1 - alpha))``: a revision whose true rate is ``p1``
  or more passes with probability at most ``beta`` (5%).

Every agreeing sample lowers the ratio by ``ln((1 - p0) / (1 - p1))``, so a revision that
never disagrees passes after ``passing_samples()`` samples (371 at p1 = 1%, 185 at 2%).
At p1 = 1%, simulated: a 5% disagreement is refused after 72 samples (median; 128 at the
90th percentile), 10% after 26 (60), 1% after 487 (1171) in 95% of runs. A test still
undecided at ``max_samples`` (truncation) decides by whether the observed rate is below
the geometric midpoint of ``p0`` and ``p1``, where the ratio is zero.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum

ALPHA = 0.01  # chance of refusing a revision that disagrees at rate p0 or less
BETA = 0.05  # chance of passing a revision that disagrees at rate p1 or more
INDIFFERENCE = 5.0  # p0 = p1 / INDIFFERENCE


class Verdict(Enum):
    CONTINUE = "continue"
    PASS = "pass"
    REFUSE = "refuse"


@dataclass
class SequentialTest:
    """Counts and the running log-likelihood ratio of one shadow comparison."""

    p1: float
    max_samples: int
    samples: int = 0
    disagreements: int = 0

    @property
    def p0(self) -> float:
        return self.p1 / INDIFFERENCE

    def add(self, disagreements: int, samples: int) -> Verdict:
        """Count ``samples`` more scored samples, ``disagreements`` of them disagreeing."""
        self.samples += samples
        self.disagreements += disagreements
        return self.verdict()

    def llr(self) -> float:
        agree = self.samples - self.disagreements
        return self.disagreements * math.log(self.p1 / self.p0) + agree * math.log(
            (1 - self.p1) / (1 - self.p0)
        )

    def verdict(self) -> Verdict:
        ratio = self.llr()
        if ratio >= math.log((1 - BETA) / ALPHA):
            return Verdict.REFUSE
        if ratio <= math.log(BETA / (1 - ALPHA)):
            return Verdict.PASS
        if self.samples >= self.max_samples:
            return Verdict.REFUSE if ratio > 0 else Verdict.PASS
        return Verdict.CONTINUE

    def passing_samples(self) -> int:
        """How many samples without a disagreement it takes to pass."""
        per_agreement = math.log((1 - self.p0) / (1 - self.p1))
        return math.ceil(-math.log(BETA / (1 - ALPHA)) / per_agreement)
