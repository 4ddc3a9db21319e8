"""Adaptive k (`--num-speculative-tokens auto`): each round, the draft length that maximises
expected tokens per second (specdec.round_model), from running estimates of what rounds yield
and cost (specdec.round_estimates), and how much of the draft in hand to verify.

Acceptance comes in runs (prompt lookup matches a repeated passage for a few rounds, then
nothing), so the yields are kept apart after a round that accepted a draft and after one that
did not, and `best_policy` picks k for both states at once over the long run: a round at k = 0
never learns that a run has begun, which choosing per round would not count. In a batch the
sessions' rows are padded to the widest window, so there one k serves both states, drafts
are not trimmed (`AdaptiveK.batched`), and the client's sessions change k together, only for a
clear gain (SWITCH_MARGIN), choosing once per round of the batch.

Every `EXPLORE_EVERY` rounds (of all the sessions on the estimates) one round tries a
neighbouring k, alternately above (verifying every draft it gets; two rounds with
pre-drafting, as only the second can hit) and below, so the estimates for lengths not in use
(acceptance at the next position, the cost of each window, the hit rate) stay alive. At k = 0
one round in `EXPLORE_AT_ZERO` asks for the k that would pay best if asking did.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specdec.round_estimates import RoundEstimates, RoundReport
from specdec.round_model import Policy, RoundCosts, best_policy, choose_window

EXPLORE_EVERY = 24       # one round in this many tries a neighbouring k (each costs: a
#                          verify at another window size, and the switch between compiled windows)
START_K = 4              # k before anything has been measured (capped at max_k)
# At k = 0 nothing but exploration brings news of acceptance, and trying costs little (prompt
# lookup: a proposer round trip and a wider window). Once in EXPLORE_EVERY rounds, prompt lookup
# that settled on k = 0 over a prompt's first unmatched rounds stayed there for hundreds of
# rounds while k = 3 paid: its acceptance estimates fade over ~50 observations.
EXPLORE_AT_ZERO = 6
# In a batch, the k in use (shared by the client's sessions, as the estimates are) is kept
# until another is expected to yield this much more. The estimates are noisy, and there a
# switch costs what the model does not price: sessions that disagree pad each other's
# windows, and a pre-drafted branch of the old length cannot answer a longer request. With 8
# sessions, choosing afresh each round flipped between neighbours. (Alone, a session follows
# the estimates: its optimum is flat, and a margin would hold it short of it while the next
# position's acceptance is still a prior.)
SWITCH_MARGIN = 0.03


@dataclass
class AdaptiveK:
    """One generation under `--num-speculative-tokens auto`: the k each round should use and
    how much of its draft to verify, from the estimates it shares with the client's other
    generations (a fresh set when it has none)."""

    max_k: int
    estimates: RoundEstimates = field(default_factory=RoundEstimates)
    occupancy: int = 1
    explore_up: bool = False   # this round tries a larger k and verifies all of its drafts
    after_hit: bool = True     # the last round that asked for drafts accepted one
    chosen: Policy | None = None  # this round's policy (next_k): one evaluation per round
    asked_last: int = 0        # drafts the last round asked for (its branches' length)
    explore_again: int = 0     # > 0: the next round explores this k again (pre-drafting)
    round_costs: RoundCosts | None = None   # this round's estimates, computed once (costs)

    @property
    def batched(self) -> bool:
        """Other sessions share the verifier's engine calls. Their rows are padded to the
        widest window, so one session's smaller window saves nothing while another's is
        wider: sessions then use one k (the best for both states, as every session on the
        same estimates picks the same), verify every draft they get, and explore n times
        less often (a wider exploring window costs every row of the batch)."""
        return self.occupancy > 1

    def costs(self) -> RoundCosts:
        """This round's cost estimates, computed once a round (next_k resets them): next_k and
        window both price rounds with them. This session observes only at the round's end;
        other sessions on the same estimates may meanwhile, but in a batch window() prices
        nothing. Once instead of twice, auto's own CPU time a round went from ~96 to ~84 us
        on the development machine (medians of the recent calls, a line through the window
        costs)."""
        if self.round_costs is None:
            self.round_costs = self.estimates.costs(self.max_k)
        return self.round_costs

    def policy(self, least_k: int = 0) -> Policy:
        """least_k = 1: the best policy that always asks for drafts."""
        return best_policy(self.estimates.rates(True, self.max_k),
                           self.estimates.rates(False, self.max_k), self.costs(),
                           self.max_k, self.estimates.rows(self.occupancy), self.after_hit,
                           common=self.batched, keep=self.estimates.policy_in_use,
                           margin=SWITCH_MARGIN if self.batched else 0.0, least_k=least_k)

    def best_k(self) -> int:
        self.chosen = self.estimates.policy_in_use = self.policy()
        self.estimates.policy_at = self.estimates.rounds
        return self.chosen.k(self.after_hit)

    def next_k(self) -> int:
        """This round's k: the best, or every EXPLORE_EVERY rounds a neighbour of it (at k = 0,
        every EXPLORE_AT_ZERO rounds, the k that would pay best if asking did)."""
        self.estimates.rounds += 1
        rounds = self.estimates.rounds
        self.explore_up, self.chosen, self.round_costs = False, None, None
        if self.max_k > 0 and not self.estimates.measured():
            return min(START_K, self.max_k)  # nothing measured yet
        if self.explore_again:   # an upward exploration's second round: this one can hit
            k, self.explore_up, self.explore_again = self.explore_again, True, 0
            return k
        # In a batch of n, the policy is chosen afresh once in n rounds (of all its sessions),
        # so the batch as a whole chooses as often as a lone session, which does every round.
        # A choice costs the client's CPU ~0.1 ms: with 8 sessions on the 2-core development
        # machine, choosing every session's round cost auto 5% of its tokens/s.
        used = self.estimates.policy_in_use
        if used is None or rounds - self.estimates.policy_at >= self.occupancy:
            k = self.best_k()
        else:
            self.chosen, k = used, used.k(self.after_hit)
        # The rounds counted are those of every session on the estimates: in a batch of n each
        # session then explores n times less often, and the batch as a whole as often as a
        # lone session does. (Counted per session, a short generation in a batch of 8 would
        # never explore, and a k = 0 chosen from its first rounds would never be revisited.)
        if k == 0 and self.max_k > 0 and rounds % EXPLORE_AT_ZERO == 0:
            # The k that would pay best if asking did (the larger of its two states). k = 1
            # only refreshed the first position: prompt lookup then stayed at k = 0 over a
            # prompt's first ~170 rounds, while the later positions' estimates stayed where
            # they were when k fell (bench.auto_k: auto 0.94 of the best fixed k; 0.96 now).
            asking = self.policy(least_k=1)
            self.explore_up, k = True, max(asking.k_after_hit, asking.k_after_miss)
        elif k > 0 and rounds % EXPLORE_EVERY == 0:
            self.explore_up = (rounds // EXPLORE_EVERY) % 2 == 1
            k = min(k + 1, self.max_k) if self.explore_up else k - 1
        if self.explore_up and len(self.estimates.propose_hit):
            # With pre-drafting, the first round at a larger k cannot hit (its branches were
            # drafted for the smaller one): only a second round at it tells its hit rate.
            self.explore_again = k
        return k

    def window(self, drafted: int) -> int:
        """How many of this round's `drafted` drafts to verify (choose_window); all of them
        before anything is measured, when exploring upwards, and in a batch."""
        if self.explore_up or self.batched or not self.estimates.measured() or drafted == 0:
            return drafted
        acceptance, _ = self.estimates.rates(self.after_hit, self.max_k)
        rate = (self.chosen or self.policy()).rate   # this round's, from next_k
        return choose_window(acceptance, self.costs(), drafted,
                             self.estimates.rows(self.occupancy), rate)

    def observe(self, r: RoundReport) -> None:
        self.occupancy = max(r.occupancy, 1)
        self.estimates.observe(r, self.occupancy, self.after_hit, 0 < r.asked <= self.asked_last)
        self.asked_last = r.asked
        if r.asked > 0:
            self.after_hit = r.accepted > 0
