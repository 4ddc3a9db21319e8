"""What the client does when a service goes away mid-generation, so that no work is lost.

- The proposer is optional: while it is unreachable or full the generation goes on with target-only
  steps (same tokens, fewer per step), and every `proposer_retry_s` the client opens a new
  proposer session, which resyncs from start = 0 by the ordinary sync rule.
- The verifier holds the committed sequence, but the client holds it too: a lost verifier is
  retried with backoff until `deadline_s`, then a new session is prefilled with the whole
  sequence (start = 0), which emits exactly the token the lost step would have ended with.
  Retrying is safe because a prefill from start = 0 is idempotent; a verify step is never
  re-sent on a broken stream.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from specdec.flags import flag


class LinkLost(Exception):
    """A link's service is gone for now (process died, restarting, draining, session closed
    as idle, step deadline missed); opening a new session may succeed later."""


class Busy(Exception):
    """A service refused a session for lack of capacity (all its slots taken). Final for the
    verifier; the proposer is optional, so the generation goes on target-only and retries it
    every `proposer_retry_s`, as when it is lost."""


@dataclass(frozen=True)
class RecoveryPolicy:
    deadline_s: float = flag(60.0, name="--recovery-deadline",
                             help="seconds to keep reconnecting to a lost verifier")
    backoff_s: float = 0.2        # first delay between verifier attempts, doubled each time
    backoff_max_s: float = 3.0
    proposer_retry_s: float = 2.0  # while the proposer is down, try a new session this often


def backoff_delays(policy: RecoveryPolicy) -> Iterator[float]:
    """0, b, 2b, 4b, ... capped at backoff_max_s."""
    yield 0.0
    delay = policy.backoff_s
    while True:
        yield delay
        delay = min(delay * 2, policy.backoff_max_s)
