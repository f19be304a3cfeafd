"""A circuit breaker per replica: a replica that keeps failing is taken out, then probed back in.

Pure state and `now` passed in, so the rules are tested without waiting.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Breaker:
    threshold: int = 3  # consecutive failures that open the circuit
    cooldown_s: float = 5.0  # first time out; doubles on each failed probe, up to max_cooldown_s
    max_cooldown_s: float = 60.0
    failures: int = 0
    open_until: float = 0.0  # 0: closed
    probing: bool = False  # half-open: one call is on trial
    _cooldown: float = 0.0

    def allows(self, now: float) -> bool:
        if self.open_until == 0.0:
            return True
        if now < self.open_until or self.probing:
            return False
        self.probing = True  # half-open: let exactly one call through
        return True

    def is_open(self, now: float) -> bool:
        return self.open_until != 0.0 and (now < self.open_until or self.probing)

    @property
    def closed(self) -> bool:
        return self.open_until == 0.0

    def ready_to_probe(self, now: float) -> bool:
        return self.open_until != 0.0 and now >= self.open_until and not self.probing

    def abandoned(self) -> None:
        """The probe call ended without a verdict (the client left): the next call may probe."""
        self.probing = False

    def succeeded(self) -> None:
        self.failures = 0
        self.open_until = 0.0
        self.probing = False
        self._cooldown = 0.0

    def failed(self, now: float) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.threshold:
            self._cooldown = min(self.max_cooldown_s, self._cooldown * 2 if self._cooldown else self.cooldown_s)
            self.open_until = now + self._cooldown
            self.probing = False
