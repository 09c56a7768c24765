"""The rollout: register → warm up → shadow → evaluation gate → canary under guard rails → promote,
with an automatic rollback from any step and any failure after register (an exception of any kind, or
SIGTERM/SIGINT through ``stop_on_signals``). Every step is written to the audit log, and whatever
happens the serving version keeps serving. The rollout holds a lease on the model (``lease.py``); a
later rollout, or ``abort``, recovers what a dead owner (SIGKILL, a lost machine) left behind."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

from deepfake_serving.evaluation.metrics import Evaluation, confusion_png, evaluate_folder, labelled_files, worse
from deepfake_serving.monitoring.drift import psi
from deepfake_serving.rollout.audit import AuditLog
from deepfake_serving.rollout.lease import Lease, LeaseFile, LeaseHeld
from deepfake_serving.rollout.routing import Split, VersionStats
from deepfake_serving.rollout.targets import Counters, RolloutTarget, ServerUnavailable


@dataclass(frozen=True)
class RolloutPolicy:
    warmup_requests: int = 20  # a fresh TorchServe worker is 30-50 % slower for its first ~20 requests
    # shadow: the candidate answers the probe set beside the serving version
    min_label_agreement: float = 0.0  # untrained demo weights disagree; set e.g. 0.9 for real models
    max_mean_abs_delta: float = 1.0
    # candidate p50 / serving p50 on the probes; off by default: during the shadow only the serving
    # version carries live load, so the comparison is confounded (the canary judges latency)
    shadow_latency_ratio: float | None = None
    shadow_rounds: int = 3  # each probe this many times, alternating which version answers first
    # promotion gate on the labelled folder: candidate metric >= serving metric - tolerance
    gate_metric: str = "f1"
    gate_tolerance: float = 0.02
    # canary
    canary_weight: float = 10.0  # percent of keys
    watch_s: float = 30.0
    check_every_s: float = 5.0
    min_canary_requests: int = 5
    # guard rails, candidate against serving over the watch window
    max_error_ratio_increase: float = 0.01
    max_latency_ratio: float = 2.0  # candidate p50 (probes), mean (server) or p95 (router) latency / serving's
    # consecutive checks over the latency limit before a rollback: one noisy check on shared cores is
    # not a slow model (failures and error ratios roll back at the first check)
    slow_checks_to_rollback: int = 2
    canary_probes: int = 2  # per check and version: the controller's own interleaved requests
    # The candidate's P(fake) distribution against the serving version's over the canary (the servers'
    # deepfake_fake_probability histograms): roll back above this PSI once each has min_score_answers.
    # Off by default: a retrained model may move scores on purpose; 0.25 is the usual "significant" line.
    max_score_psi: float | None = None
    min_score_answers: int = 50
    drain_s: float = 5.0  # after traffic moves away from a version, before it is removed
    lease_ttl_s: float = 30.0  # an owner on another host is dead once its lease is this old (renewed every third)


class RolloutError(RuntimeError):
    """The rollout stopped; ``step`` says where. The serving version is still serving."""

    def __init__(self, step: str, message: str):
        super().__init__(f"{step}: {message}")
        self.step = step


class RolloutStopped(BaseException):
    """SIGTERM or SIGINT arrived (a BaseException, so that no ``except Exception`` on the way swallows it)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


def stop_on_signals() -> None:
    """SIGTERM and SIGINT raise RolloutStopped in the main thread, once: further ones are ignored while
    the rollback runs (a service manager's SIGKILL after its timeout is what the lease is for)."""

    def stop(signum, frame):
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN)
        raise RolloutStopped(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)


def lease_file(split_file: Path) -> Path:
    return Path(split_file).with_suffix(".lease")


@dataclass
class Rollout:
    target: RolloutTarget
    audit: AuditLog
    split_file: Path
    policy: RolloutPolicy = RolloutPolicy()
    probes: Sequence[bytes] = ()
    labelled_folder: Path | None = None
    reports: Path | None = None
    router_stats: Callable[[], dict] | None = None  # RoutedClient.stats of live traffic, when we route it
    on_split: Callable[[Split], None] | None = None  # e.g. regenerate and reload the nginx split
    figures: dict = field(default_factory=dict)

    # -- plumbing ------------------------------------------------------------------------------
    def _log(self, step: str, outcome: str, message: str = "", **figures) -> None:
        self.figures[step] = figures
        self.audit.append(model=self.target.model, serving=self.serving, candidate=self.candidate,
                          step=step, outcome=outcome, message=message,
                          figures={"backend": self.target.backend, **figures})

    def _versions(self) -> tuple[str, str]:
        """(serving, candidate): known in every step after register."""
        if self.serving is None or self.candidate is None:
            raise RolloutError(self.step, "no candidate is registered beside a serving version")
        return self.serving, self.candidate

    def _set_split(self, split: Split) -> None:
        split.save(self.split_file)
        if self.on_split:
            self.on_split(split)

    # -- the whole thing -------------------------------------------------------------------------
    def run(self, candidate_archive: str | Path) -> str:
        """Returns the version serving at the end (the candidate when promoted)."""
        self.serving, self.candidate, self.step = None, None, "start"
        lease = LeaseFile(lease_file(self.split_file))
        self._take(lease)
        try:
            try:
                self.serving = self.target.serving_version()
                versions_before = self.target.versions()
            except ServerUnavailable as err:
                self._log("start", "failed", f"management API unavailable: {err}")
                raise RolloutError("start", str(err)) from None
            if self.labelled_folder is not None:
                try:
                    labelled_files(self.labelled_folder)  # refused before anything changes
                except ValueError as err:
                    self._log("start", "refused", str(err))
                    raise RolloutError("start", str(err)) from None
            lease.update(serving=self.serving, versions_before=versions_before, phase="register")
            self._set_split(Split(self.target.model, self.serving))
            self._log("start", "ok", f"candidate {Path(candidate_archive).name}")
            try:
                self.step = "register"
                try:
                    self.candidate = self.target.register(candidate_archive)
                except ServerUnavailable as err:
                    self._log("register", "failed", str(err))
                    raise RolloutError("register", str(err)) from None
                lease.update(candidate=self.candidate)
                self._log("register", "ok")
                steps = {"warm_up": self._warm_up, "shadow": self._shadow, "gate": self._gate,
                         "canary": self._canary, "promote": self._promote}
                for self.step, run_step in steps.items():  # self.step: where a failure happened
                    lease.update(phase=self.step)
                    run_step()
            except BaseException as err:  # noqa: BLE001 - whatever stops it (RolloutStopped too) rolls back
                cause = err if isinstance(err, RolloutError) else RolloutError(self.step, f"{type(err).__name__}: {err}")
                if cause is not err:
                    self._log(self.step, "stopped" if isinstance(err, RolloutStopped) else "failed", str(cause))
                self._rollback(cause, versions_before)
                raise
            return self.candidate
        finally:
            lease.release()

    def abort(self, wait_s: float = 300.0) -> str:
        """``rollout --abort``: a live owner on this host is sent SIGTERM (it rolls back itself); a dead
        owner's leftovers are recovered here. Returns what was done."""
        lease = LeaseFile(lease_file(self.split_file))
        held = lease.read()
        if held is None:
            return f"no rollout of {self.target.model} holds {lease.path}"
        if not held.owner_alive():
            self.recover(held, lease)
            return f"recovered after a dead rollout ({held.describe()})"
        if held.host != socket.gethostname():
            raise RolloutError("abort", f"the rollout ({held.describe()}) runs on another host: stop it there")
        os.kill(held.pid, signal.SIGTERM)
        deadline = time.monotonic() + wait_s
        while (current := lease.read()) is not None and current.pid == held.pid:
            if time.monotonic() > deadline:
                raise RolloutError("abort", f"the rollout ({held.describe()}) did not stop within {wait_s:.0f} s")
            time.sleep(0.2)
        return f"the running rollout ({held.describe()}) was stopped and rolled back"

    def _take(self, lease: LeaseFile) -> None:
        """Take the model's lease; a dead owner's is recovered first, a live owner's refuses."""
        mine = Lease.mine(self.target.model, self.target.backend, self.policy.lease_ttl_s)
        for _ in range(2):
            try:
                return lease.acquire(mine)
            except LeaseHeld as held:
                if held.lease.owner_alive():
                    message = f"{held} ({lease.path})"
                    self._log("start", "refused", message)
                    raise RolloutError("start", message) from None
                self.recover(held.lease, lease)
        raise RolloutError("start", f"the lease {lease.path} changed hands while recovering it")

    def recover(self, dead: Lease, lease: LeaseFile | None = None) -> None:
        """Undo what a dead rollout left: every user back on its serving version (or on its candidate,
        when the server already made that the default: the promotion is completed), the orphaned
        candidate unregistered; audited ``recovered``."""
        lease = lease or LeaseFile(lease_file(self.split_file))
        if not lease.claim(dead):
            return
        self.serving, self.candidate = dead.serving, dead.candidate
        if dead.serving is None:  # it died before it changed anything
            self._log("recover", "recovered", f"dead rollout ({dead.describe()}) had changed nothing")
            return
        serving, removed, problems = self._restore(dead.serving, dead.candidate, dead.versions_before)
        self._log("recover", "recovered", f"dead rollout ({dead.describe()}) stopped in {dead.phase}; "
                  f"{serving} serves every user; removed {removed or 'nothing'}" + "".join(problems),
                  dead_owner={"pid": dead.pid, "host": dead.host, "phase": dead.phase}, removed=removed)

    def _restore(self, serving: str, candidate: str | None, versions_before: list[str]) -> tuple[str, list, list]:
        """(version serving now, versions removed, problems): traffic back to ``serving`` first, then
        after the drain every version registered since ``versions_before`` goes. When the server
        already has the candidate as its default (died or stopped inside promote), the promotion is
        completed instead."""
        try:
            promoted = candidate is not None and self.target.serving_version() == candidate
        except ServerUnavailable:
            promoted = False
        if promoted and candidate is not None:
            self._set_split(Split(self.target.model, candidate))
            return candidate, [], []
        self._set_split(Split(self.target.model, serving))
        time.sleep(self.policy.drain_s)
        removed, problems = [], []
        try:
            orphans = [v for v in self.target.versions() if v not in versions_before and v != serving]
        except ServerUnavailable as err:
            orphans, problems = [], [f"; versions unknown: {err}"]
        for version in orphans:
            try:
                self.target.remove(version)
                removed.append(version)
            except ServerUnavailable as err:
                problems.append(f"; {version} could not be removed: {err}")
        return serving, removed, problems

    # -- steps -----------------------------------------------------------------------------------
    def _warm_up(self) -> None:
        serving, candidate = self._versions()
        latencies = []
        for probe in [self.probes[0]] * self.policy.warmup_requests if self.probes else []:
            start = time.perf_counter()
            answer = self.target.predict(candidate, probe)
            latencies.append((time.perf_counter() - start) * 1000)
            if not answer.ok:
                self._log("warm_up", "failed", f"candidate answered {answer.status}: {answer.body}")
                raise RolloutError("warm_up", f"candidate answered {answer.status}")
        self._log("warm_up", "ok", requests=len(latencies), latency_ms=[round(x, 1) for x in latencies])

    def _shadow(self) -> None:
        serving, candidate = self._versions()
        deltas, agree = [], 0
        times: dict[str, list[float]] = {"serving": [], "candidate": []}
        pairs = [("serving", serving), ("candidate", candidate)]
        for i, data in enumerate(list(self.probes) * self.policy.shadow_rounds):
            answers = {}
            for role, version in (pairs if i % 2 == 0 else pairs[::-1]):
                start = time.perf_counter()
                answers[role] = self.target.predict(version, data)
                times[role].append((time.perf_counter() - start) * 1000)
            if not answers["candidate"].ok:
                self._log("shadow", "failed", f"candidate answered {answers['candidate'].status}")
                raise RolloutError("shadow", f"candidate answered {answers['candidate'].status} on a probe")
            a, b = answers["serving"].body, answers["candidate"].body
            agree += a.get("label") == b.get("label")
            if a.get("fake_probability") is not None and b.get("fake_probability") is not None:
                deltas.append(abs(a["fake_probability"] - b["fake_probability"]))
        n = max(len(self.probes) * self.policy.shadow_rounds, 1)
        figures: dict = {"probes": len(self.probes), "comparisons": n, "label_agreement": agree / n,
                   "mean_abs_delta": statistics.fmean(deltas) if deltas else 0.0,
                   "serving_p50_ms": statistics.median(times["serving"]) if times["serving"] else None,
                   "candidate_p50_ms": statistics.median(times["candidate"]) if times["candidate"] else None}
        problems = []
        if figures["label_agreement"] < self.policy.min_label_agreement:
            problems.append(f"label agreement {figures['label_agreement']:.2f} < {self.policy.min_label_agreement}")
        if figures["mean_abs_delta"] > self.policy.max_mean_abs_delta:
            problems.append(f"mean |Δp| {figures['mean_abs_delta']:.3f} > {self.policy.max_mean_abs_delta}")
        ratio = self.policy.shadow_latency_ratio
        if ratio and figures["serving_p50_ms"] and figures["candidate_p50_ms"] > ratio * figures["serving_p50_ms"]:
            problems.append(f"candidate p50 {figures['candidate_p50_ms']:.0f} ms > {ratio}× "
                            f"serving {figures['serving_p50_ms']:.0f} ms")
        self._log("shadow", "failed" if problems else "ok", "; ".join(problems), **figures)
        if problems:
            raise RolloutError("shadow", "; ".join(problems))

    def _gate(self) -> None:
        serving, candidate = self._versions()
        if self.labelled_folder is None:
            self._log("gate", "skipped", "no labelled folder given")
            return
        results: dict[str, Evaluation] = {}
        for role, version in (("serving", serving), ("candidate", candidate)):
            results[role] = evaluate_folder(self.labelled_folder, partial(self.target.predict, version))
            if self.reports:
                self.reports.mkdir(parents=True, exist_ok=True)
                confusion_png(results[role], self.reports / f"confusion_{self.target.model}_{version}.png",
                              f"{self.target.model} {version} ({role})")
        metric = self.policy.gate_metric
        serving, candidate = getattr(results["serving"], metric), getattr(results["candidate"], metric)
        figures = {role: r.to_dict() for role, r in results.items()}
        if results["candidate"].failed or candidate is None or worse(metric, candidate, serving,
                                                                     self.policy.gate_tolerance):
            message = (f"candidate {metric} {candidate} worse than serving {serving} beyond "
                       f"{self.policy.gate_tolerance} ({results['candidate'].failed} failed requests)")
            self._log("gate", "failed", message, **figures)
            raise RolloutError("gate", message)
        self._log("gate", "ok", f"candidate {metric} {candidate} vs serving {serving}", **figures)

    def _canary(self) -> None:
        serving, candidate = self._versions()
        split = Split(self.target.model, serving, candidate, self.policy.canary_weight)
        before = {v: self.target.counters(v) for v in (serving, candidate)}
        scores_before = self._score_histograms()
        router_before = self._router_snapshot()
        self._set_split(split)
        self._log("canary", "started", f"{self.policy.canary_weight}% of keys to {candidate}",
                  weight=self.policy.canary_weight)
        started = time.monotonic()
        deadline = started + self.policy.watch_s
        probes = {serving: VersionStats(), candidate: VersionStats()}
        slow_checks = 0
        while True:
            remaining = deadline - time.monotonic()
            next_check = time.monotonic() + (min(self.policy.check_every_s, remaining) if remaining > 0
                                             else self.policy.check_every_s)  # watching on past a slow check
            self._probe(probes)
            time.sleep(max(0.0, next_check - time.monotonic()))
            now = {v: self.target.counters(v) for v in (serving, candidate)}
            window = {v: now[v] - before[v] for v in now}
            failing, slow, figures = self._guard_rails(window, self._router_window(router_before), probes,
                                                       *self._server_quantiles(started))
            failing += self._score_shift(scores_before, figures)
            slow_checks = slow_checks + 1 if slow else 0
            if failing or slow_checks >= self.policy.slow_checks_to_rollback:
                problems = "; ".join(failing + slow) + (f" ({slow_checks} checks in a row)" if slow_checks > 1 else "")
                self._log("canary", "breach", problems, **figures)
                raise RolloutError("canary", problems)
            if slow:
                self._log("canary", "slow", f"{'; '.join(slow)} (check {slow_checks} of "
                                            f"{self.policy.slow_checks_to_rollback} in a row to roll back)", **figures)
            if time.monotonic() >= deadline and not slow_checks:  # never promote on a slow check
                break
        if figures["candidate_requests"] < self.policy.min_canary_requests:
            message = f"{figures['candidate_requests']} canary requests < {self.policy.min_canary_requests}"
            self._log("canary", "failed", message, **figures)
            raise RolloutError("canary", message)
        self._log("canary", "ok", **figures)

    def _probe(self, probes: dict[str, VersionStats]) -> None:
        """Interleaved requests to both versions under the same live load: latencies measured side by side.
        (TorchServe's server-side latency counts a whole batch's time for each request in it, so it
        cannot compare versions whose batches fill differently.)"""
        serving, candidate = self._versions()
        if not self.probes:
            return
        for i in range(self.policy.canary_probes):
            order = [serving, candidate] if i % 2 == 0 else [candidate, serving]
            for version in order:
                start = time.perf_counter()
                answer = self.target.predict(version, self.probes[i % len(self.probes)])
                probes[version].latencies_ms.append((time.perf_counter() - start) * 1000)
                probes[version].failures += 0 if answer.ok else 1

    def _score_histograms(self) -> dict[str, dict[float, float]]:
        if self.policy.max_score_psi is None:
            return {}
        return {v: self.target.score_histogram(v) for v in self._versions()}

    def _score_shift(self, before: dict[str, dict[float, float]], figures: dict) -> list[str]:
        """The candidate's P(fake) histogram over the canary against the serving version's: PSI over the
        server's buckets (monitoring.drift.psi), judged once each version has min_score_answers."""
        if self.policy.max_score_psi is None:
            return []
        serving, candidate = self._versions()
        counts = {}
        for version, now in self._score_histograms().items():
            bounds = sorted(now)
            cumulative = [now[b] - before.get(version, {}).get(b, 0.0) for b in bounds]
            counts[version] = [c - p for c, p in zip(cumulative, [0.0, *cumulative[:-1]])]
        answers = {v: sum(c) for v, c in counts.items()}
        figures["score_answers"] = answers
        if min(answers.get(serving, 0), answers.get(candidate, 0)) < self.policy.min_score_answers:
            return []
        index = psi(counts[serving], counts[candidate])
        figures["score_psi"] = round(index, 4)
        if index > self.policy.max_score_psi:
            return [f"candidate's P(fake) distribution moved from serving's: PSI {index:.2f} > {self.policy.max_score_psi}"]
        return []

    def _server_quantiles(self, canary_started: float) -> tuple[dict, bool]:
        """The server's own latency quantiles per version (Triton), and whether to judge them: only
        once its window holds canary traffic alone, not the candidate's warm-up and shadow requests."""
        serving, candidate = self._versions()
        window = self.target.quantile_window_s
        if window is None:
            return {}, False
        quantiles = {v: self.target.latency_quantiles(v) for v in (serving, candidate)}
        return quantiles, time.monotonic() - canary_started >= window

    def _router_snapshot(self) -> dict:
        if not self.router_stats:
            return {}
        return {v: (s.requests, s.failures) for v, s in self.router_stats().items()}

    def _router_window(self, before: dict) -> dict:
        """Per version: requests, failures and p95 since ``before`` (the router keeps every latency)."""
        if not self.router_stats:
            return {}
        window = {}
        for version, stats in self.router_stats().items():
            seen, failed = before.get(version, (0, 0))
            recent = VersionStats(stats.latencies_ms[seen:])
            window[version] = {"requests": recent.requests, "failures": stats.failures - failed,
                               "p95_ms": recent.percentile(95) if recent.requests else None}
        return window

    def _guard_rails(self, server: dict[str, Counters], router: dict, probes: dict[str, VersionStats],
                     quantiles: dict | None = None,
                     judge_quantiles: bool = False) -> tuple[list[str], list[str], dict]:
        """(failing, slow, figures): the candidate's failures and error ratio, its latencies, against serving's."""
        serving, candidate = self._versions()
        s, c = server[serving], server[candidate]
        ps, pc = probes[serving], probes[candidate]
        rs, rc = router.get(serving, {}), router.get(candidate, {})
        figures = {"serving_requests": s.requests or rs.get("requests", 0),
                   "candidate_requests": c.requests or rc.get("requests", 0),
                   "serving_mean_ms": s.mean_latency_ms, "candidate_mean_ms": c.mean_latency_ms,
                   "serving_error_ratio": s.error_ratio, "candidate_error_ratio": c.error_ratio,
                   "router": router,
                   "probe_p50_ms": {"serving": ps.percentile(50), "candidate": pc.percentile(50)},
                   "probe_failures": {"serving": ps.failures, "candidate": pc.failures}}
        failing, slow = [], []
        if pc.failures > ps.failures:
            failing.append(f"candidate failed {pc.failures} of {pc.requests} probes (serving {ps.failures})")
        if pc.requests and ps.percentile(50) and pc.percentile(50) > self.policy.max_latency_ratio * ps.percentile(50):
            slow.append(f"candidate probe p50 latency {pc.percentile(50):.0f} ms > {self.policy.max_latency_ratio}× "
                        f"serving {ps.percentile(50):.0f} ms")
        # error ratio: the server's count where it keeps one per version (Triton), else the router's
        errors = {}
        for role, counters, routed in (("serving", s, rs), ("candidate", c, rc)):
            ratio = counters.error_ratio
            if ratio is None and routed.get("requests"):
                ratio = routed["failures"] / routed["requests"]
            errors[role] = ratio
        if errors["candidate"] is not None and errors["candidate"] > (errors["serving"] or 0.0) + self.policy.max_error_ratio_increase:
            failing.append(f"candidate error ratio {errors['candidate']:.3f} > serving "
                           f"{errors['serving'] or 0.0:.3f} + {self.policy.max_error_ratio_increase}")
        if c.mean_latency_ms and s.mean_latency_ms and c.mean_latency_ms > self.policy.max_latency_ratio * s.mean_latency_ms:
            slow.append(f"candidate mean latency {c.mean_latency_ms:.0f} ms > {self.policy.max_latency_ratio}× "
                        f"serving {s.mean_latency_ms:.0f} ms (server metrics)")
        if rc.get("p95_ms") and rs.get("p95_ms") and rc["p95_ms"] > self.policy.max_latency_ratio * rs["p95_ms"]:
            slow.append(f"candidate p95 {rc['p95_ms']:.0f} ms > {self.policy.max_latency_ratio}× "
                        f"serving {rs['p95_ms']:.0f} ms (router)")
        if quantiles:
            qs, qc = quantiles.get(serving, {}).get(0.95), quantiles.get(candidate, {}).get(0.95)
            figures["server_p95_ms"] = {"serving": qs, "candidate": qc, "judged": judge_quantiles}
            if judge_quantiles and qs and qc and qc > self.policy.max_latency_ratio * qs:
                slow.append(f"candidate p95 {qc:.0f} ms > {self.policy.max_latency_ratio}× serving {qs:.0f} ms "
                            f"(server summary over the last {self.target.quantile_window_s:.0f} s)")
        figures["error_ratios"] = errors
        return failing, slow, figures

    def _promote(self) -> None:
        serving, candidate = self._versions()
        self.target.promote(candidate)
        self._set_split(Split(self.target.model, candidate))
        self._log("promote", "ok", f"{candidate} is the serving version; {serving} stays registered "
                                   "for a manual rollback")

    def _rollback(self, cause: RolloutError, versions_before: list[str]) -> None:
        """Traffic back to the serving version first, then (after in-flight requests drain) the candidate
        goes; a stop inside promote after the server switched completes the promotion instead."""
        if self.serving is None:
            raise RolloutError(self.step, "nothing to roll back to: the serving version is unknown") from cause
        serving, removed, problems = self._restore(self.serving, self.candidate, versions_before)
        if serving == self.candidate:
            self._log("promote", "ok", f"completed after {cause}")
            return
        for problem in problems:
            self._log("rollback", "warning", problem.lstrip("; "))
        self._log("rollback", "ok", f"after {cause.step}: {cause}; removed: {removed or 'nothing'}",
                  cause_step=cause.step, removed=removed)
