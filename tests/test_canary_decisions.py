"""How the canary decides from its checks: one slow check is watched on, two in a row roll back,
the canary never ends on a slow check, failures roll back at once. The real servers' runs are in
test_rollout*.py; here each check reads scripted per-version counters, because a server cannot be
made slow for exactly one check on demand."""

import pytest

from deepfake_serving.rollout.audit import AuditLog
from deepfake_serving.rollout.controller import Rollout, RolloutError, RolloutPolicy
from deepfake_serving.rollout.targets import Counters

POLICY = RolloutPolicy(watch_s=0.3, check_every_s=0.1, min_canary_requests=1, max_latency_ratio=2.0)


class ScriptedServer:
    """Per check: the mean latency (ms) and failures of each version's 10 new requests."""

    backend, model, quantile_window_s = "scripted", "b4-mobile", None

    def __init__(self, checks: list[dict[str, tuple[float, int]]]):
        self.checks, self.reads = checks, 0
        self.totals = {"1.0": Counters(failures=0.0), "2.0": Counters(failures=0.0)}

    def counters(self, version: str) -> Counters:
        """Read by the canary once per version before it starts, then once per version per check."""
        check = self.reads // 2 - 1
        self.reads += 1
        if 0 <= check:
            latency, failures = self.checks[min(check, len(self.checks) - 1)][version]
            was = self.totals[version]
            self.totals[version] = Counters(was.requests + 10, was.failures + failures, was.latency_ms_sum + 10 * latency)
        return self.totals[version]

    def latency_quantiles(self, version: str) -> dict:
        return {}

    scores: dict[str, float] = {"1.0": 0.3, "2.0": 0.3}  # where each version's new answers fall, per check

    def score_histogram(self, version: str) -> dict:
        """Cumulative buckets: ten more answers at ``scores[version]`` each time it is read."""
        self.score_reads = getattr(self, "score_reads", {"1.0": 0, "2.0": 0})
        seen = 10 * self.score_reads[version]
        self.score_reads[version] += 1
        return {bound: seen * (self.scores[version] <= bound) for bound in (0.25, 0.5, 0.75, 1.0, float("inf"))}


def canary(tmp_path, checks, policy=POLICY, scores=None) -> tuple[list[tuple[str, str]], RolloutError | None]:
    server = ScriptedServer(checks)
    server.scores = scores or server.scores
    job = Rollout(server, AuditLog(tmp_path / "audit.jsonl"), tmp_path / "split.json", policy=policy)
    job.serving, job.candidate = "1.0", "2.0"
    error = None
    try:
        job._canary()
    except RolloutError as err:
        error = err
    return [(e["outcome"], e["message"]) for e in AuditLog(tmp_path / "audit.jsonl").entries()], error


FINE = {"1.0": (100.0, 0), "2.0": (110.0, 0)}
SLOW = {"1.0": (100.0, 0), "2.0": (400.0, 0)}
BLIP = {"1.0": (100.0, 0), "2.0": (250.0, 0)}  # over 2× alone, under it once averaged with a fine check


def test_one_slow_check_is_watched_on(tmp_path):
    # each check judges the canary's figures since it started: a blip is averaged out, not forgotten
    log, error = canary(tmp_path, [BLIP, FINE, FINE, FINE])
    assert error is None
    assert [outcome for outcome, _ in log] == ["started", "slow", "ok"]
    assert "(check 1 of 2 in a row to roll back)" in log[1][1]


def test_two_slow_checks_in_a_row_roll_back(tmp_path):
    log, error = canary(tmp_path, [FINE, SLOW, SLOW])
    assert error is not None and "mean latency" in str(error) and "(2 checks in a row)" in str(error)
    assert [outcome for outcome, _ in log] == ["started", "slow", "breach"]


def test_the_canary_does_not_end_on_a_slow_check(tmp_path):
    # the watch holds 3 checks; the third is slow, so a fourth decides (here: a second slow one)
    log, error = canary(tmp_path, [FINE, FINE, SLOW, SLOW, SLOW])
    assert error is not None and [outcome for outcome, _ in log] == ["started", "slow", "breach"]


@pytest.mark.parametrize("failures", [1, 10])
def test_failures_roll_back_at_the_first_check(tmp_path, failures):
    log, error = canary(tmp_path, [{"1.0": (100.0, 0), "2.0": (100.0, failures)}])
    assert error is not None and "error ratio" in str(error)
    assert [outcome for outcome, _ in log] == ["started", "breach"]


@pytest.mark.parametrize("candidate_score, rolled_back", [(0.3, False), (0.6, True)])
def test_a_shifted_score_distribution_rolls_back_when_judged(tmp_path, candidate_score, rolled_back):
    """max_score_psi: the candidate's answers over the canary land in another bucket than serving's → PSI
    far over 0.25 → rollback at the first check with enough answers; the same bucket → promoted."""
    from dataclasses import replace

    policy = replace(POLICY, max_score_psi=0.25, min_score_answers=10)
    log, error = canary(tmp_path, [FINE], policy, {"1.0": 0.3, "2.0": candidate_score})
    if rolled_back:
        assert error is not None and "P(fake) distribution moved" in str(error)
        assert [outcome for outcome, _ in log] == ["started", "breach"]
    else:
        assert error is None and [outcome for outcome, _ in log] == ["started", "ok"]
