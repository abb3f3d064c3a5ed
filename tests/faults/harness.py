"""Load, observation and the invariants every fault case ends with.

The promise under test: every webhook Replicate got a 2xx for ends up applied to its job, however
the parts around it fail. After each case, `Invariants.check` asserts, for every prediction of
the case:

1. no acknowledged webhook lost: each webhook id the simulator (standing in for Replicate) got
   a 2xx for has its event record on the job (`jobs/{job}/events/{key}`);
2. exactly one terminal transition and one object per output file: the job ends in the expected
   state, announced exactly once on job-events, with one Cloud Storage object per output file;
3. no job ever moves backwards: a sampler reads every job of the case several times a second
   while the fault is on, and each job's sequence of states never goes down the state order.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from google.cloud import firestore, storage

from replicate_relay.jobs import TERMINAL_STATES, Job, JobState
from replicate_relay.jobstore import EVENTS, JOBS, PREDICTIONS, JobStore, event_key
from replicate_relay.replicate_api import ModelRef, ReplicateAPI
from replicate_relay.submit import Submitter
from tests.integration.conftest import Tap

MODEL = ModelRef.parse("flux-kontext-apps/restore-image")
RESULTS = Path(__file__).resolve().parents[2] / "bench" / "results" / "faults"
_RANK = {
    JobState.SUBMITTED: 0,
    JobState.STARTING: 1,
    JobState.PROCESSING: 2,
    JobState.ARCHIVING: 3,
    **dict.fromkeys(TERMINAL_STATES, 4),
}


@dataclass
class Submitted:
    job_id: str
    prediction_id: str
    files: int
    expected: str = "succeeded"
    # Webhooks a test posted itself and got 200 for; None: the simulator sent them, and its
    # delivery log says which were acknowledged.
    posted: tuple[str, ...] | None = None


class Load:
    """Submits predictions through Replicate's client to the simulator at a steady rate, from a
    thread, so that a fault can be injected while webhooks flow."""

    def __init__(self, db: firestore.Client, simulator_url: str, webhook_url: str, token: str) -> None:
        self._api = ReplicateAPI.connect(token, base_url=simulator_url)
        self._submitter = Submitter(store=JobStore(db), replicate=self._api, webhook_url=webhook_url)
        self.submitted: list[Submitted] = []
        self._thread: threading.Thread | None = None
        self.errors: list[str] = []

    def submit(self, *, files: int = 1, duration: float = 1.0, **extra: Any) -> Submitted:
        job = self._submitter.submit(
            MODEL,
            {
                "input_image": "https://example.com/in.jpg",
                "sim_files": files,
                "sim_duration": duration,
                "sim_logs": 3,
                **extra,
            },
        )
        assert job.prediction_id is not None
        entry = Submitted(job.job_id, job.prediction_id, files)
        self.submitted.append(entry)
        return entry

    def start(self, count: int, per_second: float, **options: Any) -> None:
        def run() -> None:
            for _ in range(count):
                try:
                    self.submit(**options)
                except Exception as error:  # recorded, and the case fails on it
                    self.errors.append(f"{type(error).__name__}: {error}")
                time.sleep(1 / per_second)

        self._thread = threading.Thread(target=run, name="load", daemon=True)
        self._thread.start()

    def join(self, timeout: float = 60) -> None:
        if self._thread:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), f"submitting took over {timeout:g} s"
        assert not self.errors, self.errors

    def close(self) -> None:
        self._api.close()


class StateSampler:
    """Reads the jobs of a case several times a second and keeps each job's sequence of states."""

    def __init__(self, db: firestore.Client, job_ids: Callable[[], list[str]]) -> None:
        self._db = db
        self._job_ids = job_ids
        self.seen: dict[str, list[str]] = defaultdict(list)
        self.read_errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def __enter__(self) -> StateSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            for job_id in list(self._job_ids()):
                try:
                    snapshot = self._db.collection(JOBS).document(job_id).get(timeout=2)
                except Exception:  # Firestore down is one of the faults: nothing to read then
                    self.read_errors += 1
                    continue
                if snapshot.exists:
                    state = snapshot.get("state")
                    states = self.seen[job_id]
                    if not states or states[-1] != state:
                        states.append(state)


@dataclass
class Invariants:
    db: firestore.Client
    bucket: storage.Bucket
    simulator: httpx.Client
    job_events: Tap
    reconcile: Callable[[], Any]
    report: dict[str, Any] = field(default_factory=dict)

    def deliveries(self, prediction_id: str) -> list[dict[str, Any]]:
        response = self.simulator.get(f"/_sim/predictions/{prediction_id}/deliveries")
        response.raise_for_status()
        return list(response.json()["deliveries"])

    def acknowledged(self, prediction_id: str) -> list[dict[str, Any]]:
        return [d for d in self.deliveries(prediction_id) if d["status_code"] and 200 <= d["status_code"] < 300]

    def check(
        self,
        cases: list[Submitted],
        sampler: StateSampler | None,
        *,
        exempt: Callable[[dict[str, Any]], bool] = lambda _: False,
        lost_before: float | None = None,
    ) -> dict[str, Any]:
        """Assert the three invariants; `exempt` names acknowledged deliveries a case cannot keep
        (an emulator that loses its data on restart) — counted in the report, never silently.

        `lost_before`: when the Pub/Sub emulator restarted. An announcement it stored before then
        (the job shows `announced_at` earlier) died with it before the test's subscription could
        pull it; such jobs must show one announcement or none, and are counted.
        """
        lost: list[str] = []
        exempted = 0
        unseen_announcements = 0
        announced = self._announcements([self._job_id(case) for case in cases], settle_only=lost_before is not None)
        for case in cases:
            job_id = self._job_id(case)
            if case.posted is None:
                acknowledged = self.acknowledged(case.prediction_id)
            else:
                acknowledged = [{"webhook_id": webhook_id, "event": "posted", "at": 0.0} for webhook_id in case.posted]
            records = self.db.collection(JOBS).document(job_id).collection(EVENTS)
            for delivery in acknowledged:
                if records.document(event_key(delivery["webhook_id"])).get().exists:
                    continue
                if exempt(delivery):
                    exempted += 1
                else:
                    lost.append(f"{case.prediction_id}:{delivery['event']}:{delivery['webhook_id']}")
            job = Job.from_document(self.db.collection(JOBS).document(job_id).get().to_dict() or {})
            assert job.state == case.expected, (case, job.state, job.error_code, job.error)
            if lost_before is not None and job.announced_at and job.announced_at.timestamp() < lost_before:
                assert announced[job_id] <= 1, (case, f"announced {announced[job_id]} times")
                unseen_announcements += announced[job_id] == 0
            else:
                assert announced[job_id] == 1, (case, f"announced {announced[job_id]} times")
            objects = list(self.bucket.list_blobs(prefix=f"predictions/{case.prediction_id}/"))
            assert len(objects) == case.files, (case, [blob.name for blob in objects])
            assert sorted(int(entry["size"]) for entry in job.outputs) == sorted(int(b.size) for b in objects)
        assert not lost, f"acknowledged webhooks lost: {lost}"
        if sampler is not None:
            for job_id, states in sampler.seen.items():
                ranks = [_RANK[JobState(state)] for state in states]
                assert ranks == sorted(ranks), f"job {job_id} moved backwards: {states}"
                assert len([s for s in states if JobState(s) in TERMINAL_STATES]) <= 1, (job_id, states)
        self.report = {
            "predictions": len(cases),
            "exempted_deliveries": exempted,
            "announcements_lost_with_the_emulator": unseen_announcements,
        }
        return self.report

    def _announcements(
        self, job_ids: list[str], *, timeout: float = 120.0, settle: float = 2.0, settle_only: bool = False
    ) -> Counter[str]:
        """job-events messages per job, once every job has one (an announcement that failed waits
        for its claim to lapse and the reconciler), plus `settle` seconds for any duplicate.
        With `settle_only`, wait only until every job shows `announced_at` in Firestore."""
        if settle_only:
            self._wait_announced(job_ids, timeout)
            timeout = 0.0
        deadline = time.monotonic() + timeout
        next_reconcile = time.monotonic() + 5
        while True:
            self.job_events()
            announced = Counter(m.message.attributes.get("job_id", "") for m in self.job_events.received)
            if all(announced[job_id] for job_id in job_ids) or time.monotonic() > deadline:
                break
            if time.monotonic() >= next_reconcile:
                self.reconcile()
                next_reconcile = time.monotonic() + 5
            time.sleep(0.5)
        time.sleep(settle)
        self.job_events()
        return Counter(m.message.attributes.get("job_id", "") for m in self.job_events.received)

    def _wait_announced(self, job_ids: list[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        next_reconcile = time.monotonic() + 5
        while time.monotonic() < deadline:
            jobs = [self.db.collection(JOBS).document(job_id).get() for job_id in job_ids]
            if all(snapshot.exists and snapshot.get("announced_at") for snapshot in jobs):
                return
            if time.monotonic() >= next_reconcile:
                self.reconcile()
                next_reconcile = time.monotonic() + 5
            time.sleep(0.5)
        raise AssertionError(f"not every job was announced within {timeout:g} s")

    def _job_id(self, case: Submitted) -> str:
        mapping = self.db.collection(PREDICTIONS).document(case.prediction_id).get()
        return str(mapping.get("job_id")) if mapping.exists else case.job_id


def wait_all_final(
    db: firestore.Client, cases: list[Submitted], *, timeout: float, reconcile: Callable[[], Any]
) -> None:
    """Until every job of the case is final, running the reconciler now and then as Cloud Scheduler
    would (a final webhook lost to a fault is its job)."""
    deadline = time.monotonic() + timeout
    next_reconcile = time.monotonic() + 5
    pending = {case.job_id for case in cases}
    while pending and time.monotonic() < deadline:
        for job_id in list(pending):
            snapshot = db.collection(JOBS).document(job_id).get()
            if snapshot.exists and JobState(snapshot.get("state")) in TERMINAL_STATES:
                pending.discard(job_id)
        if pending and time.monotonic() >= next_reconcile:
            reconcile()
            next_reconcile = time.monotonic() + 5
        time.sleep(0.3)
    assert not pending, f"{len(pending)} job(s) not final after {timeout:g} s: {sorted(pending)[:5]}"


def write_series(case: str, invariants: Invariants, cases: list[Submitted], started: float, notes: str) -> Path:
    """Webhook outcomes per second during the case, for docs/BENCHMARKS.md's throughput plots."""
    accepted: Counter[int] = Counter()
    unavailable: Counter[int] = Counter()
    for entry in cases:
        for delivery in invariants.deliveries(entry.prediction_id):
            second = int(delivery["at"] - started)
            code = delivery["status_code"]
            if code is not None and 200 <= code < 300:
                accepted[second] += 1
            elif code is None or code >= 500:
                unavailable[second] += 1
    end = max([*accepted, *unavailable, 0])
    series = [[second, accepted[second], unavailable[second]] for second in range(end + 1)]
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{case}.json"
    path.write_text(json.dumps({"case": case, "series": series, "notes": notes, **invariants.report}, indent=1))
    return path
