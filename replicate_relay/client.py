"""The app's side of Relay: submit predictions and trainings, cancel them, and wait for or watch their jobs
through Firestore listeners."""

from __future__ import annotations

import os
import queue
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from contextlib import closing
from dataclasses import replace
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from google.cloud import firestore
from google.cloud.firestore_v1.watch import Watch

from replicate_relay.config import (
    ConfigError,
    Env,
    bucket_name,
    inline_value_bytes,
    parse_duration,
    project_id,
    topic_path,
)

# Defined in the one exception tree, replicate_relay/errors.py; still importable from here.
from replicate_relay.errors import ClientClosed as ClientClosed  # noqa: PLC0414 - re-export
from replicate_relay.errors import JobFailed as JobFailed  # noqa: PLC0414 - re-export
from replicate_relay.errors import JobGone as JobGone  # noqa: PLC0414 - re-export
from replicate_relay.errors import JobWaitTimeout as JobWaitTimeout  # noqa: PLC0414 - re-export
from replicate_relay.jobs import Job, JobState, Policy
from replicate_relay.jobstore import JobStore
from replicate_relay.replicate_api import DeploymentRef, ModelRef
from replicate_relay.values import ValueStore

if TYPE_CHECKING:
    from replicate_relay.submit import Submitter


class _Closed:
    """What a closed listener's queue ends with, so a thread blocked on it wakes up."""


class _Listener:
    """One snapshot listener on a job, its snapshots handed from the listener's thread to the waiting one."""

    def __init__(self, store: JobStore, job_id: str) -> None:
        self._snapshots: queue.SimpleQueue[dict[str, Any] | _Closed | None] = queue.SimpleQueue()
        self._watch: Watch = store.listen(job_id, self._snapshots.put)

    def next(self, deadline: float | None) -> dict[str, Any] | None:
        """Block until the listener is told of the next snapshot; raises queue.Empty at `deadline`."""
        remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
        snapshot = self._snapshots.get(timeout=remaining)
        if isinstance(snapshot, _Closed):
            raise ClientClosed("the RelayClient was closed while this call waited")
        return snapshot

    def close(self) -> None:
        # Idempotent; stops the stream and joins the listener's thread (google-cloud-firestore leaves it untyped).
        self._watch.unsubscribe()  # type: ignore[no-untyped-call]
        self._snapshots.put(_Closed())


class RelayClient:
    """Submit predictions and follow their jobs, for applications.

    `wait` and `watch` never re-read the job: each opens one Firestore snapshot listener on
    `jobs/{job_id}` and blocks on what it is told, and closes it on every way out. A listener holds
    a gRPC stream to Firestore and a thread, and every change it is told of is a billed read:
    fine for a few jobs at a time; an app with many jobs in flight consumes job-events instead
    (replicate_relay.consumer).
    """

    def __init__(self, store: JobStore, *, submitter: Submitter | None = None, owns_submitter: bool = False) -> None:
        self._store = store
        self._submitter = submitter
        self._owns_submitter = owns_submitter
        self._lock = threading.Lock()
        self._listeners: set[_Listener] = set()
        self._opened = 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, submitting: bool = True) -> RelayClient:
        """The client `relay submit` is, configured from the environment (see docs/CONFIGURATION.md).

        With `submitting=False` only Firestore is needed (RELAY_PROJECT): for processes that only
        wait for or watch jobs submitted elsewhere.
        """
        # replicate_relay.submit imports this module for `relay submit --wait`.
        import google.cloud.storage as storage  # noqa: PLC0415 - only a client made from the environment needs it

        from replicate_relay.publisher import TopicPublisher  # noqa: PLC0415
        from replicate_relay.submit import SubmitSettings, Submitter  # noqa: PLC0415

        environ = os.environ if environ is None else environ
        env = Env(environ)
        project = project_id(env)
        # Values too large for a job document are read back from the bucket (read access suffices).
        bucket = storage.Client(project=project).bucket(bucket_name(env, project))
        store = JobStore(
            firestore.Client(project=project),
            policy=Policy(inline_value_bytes=inline_value_bytes(env)),
            values=ValueStore(bucket),
        )
        if not submitting:
            return cls(store)
        settings = SubmitSettings.from_env(environ)
        job_events = TopicPublisher(topic_path(project, settings.job_events_topic), deadline_seconds=10)
        submitter = Submitter.configured(store, settings, job_events=job_events)
        return cls(store, submitter=submitter, owns_submitter=True)

    # ---- submitting and reading ----

    def submit(
        self,
        model: str | ModelRef | None = None,
        input: dict[str, Any] | None = None,
        *,
        deployment: str | DeploymentRef | None = None,
        metadata: Mapping[str, str] | None = None,
        webhook_events: Sequence[str] | None = None,
        deadline: timedelta | str | None = None,
    ) -> Job:
        """Create the job and its prediction (replicate_relay.submit.Submitter.submit); returns the job, `submitted`
        or later.

        Give exactly one of `model` (`owner/name` or `owner/name:version`) and `deployment`
        (`owner/name`). `deadline` (a timedelta, or a duration such as `"90s"`, `"10m"`, `"1h30m"`)
        bounds the whole job: Replicate cancels the prediction past it (`aborted` if it never started,
        `canceled` if it was running). Without one, RELAY_DEFAULT_DEADLINE applies; `"off"` or zero
        sets none. `webhook_events` replaces RELAY_WEBHOOK_EVENTS for this prediction. Raises
        SubmitFailed when Replicate refuses it or cannot be reached (the job is then `failed`),
        ValueError for arguments no job can be made of.
        """
        if (model is None) == (deployment is None):
            raise ValueError("give exactly one of model and deployment")
        target: ModelRef | DeploymentRef
        if deployment is not None:
            target = deployment if isinstance(deployment, DeploymentRef) else DeploymentRef.parse(deployment)
        else:
            target = model if isinstance(model, ModelRef) else ModelRef.parse(str(model))
        return self._submitting(webhook_events).submit(
            target, dict(input or {}), metadata=metadata, deadline=_duration(deadline)
        )

    def submit_training(
        self,
        version: str | ModelRef,
        *,
        destination: str,
        input: dict[str, Any],
        metadata: Mapping[str, str] | None = None,
        webhook_events: Sequence[str] | None = None,
        deadline: timedelta | str | None = None,
    ) -> Job:
        """Create the job and its training of `version` (`owner/name:version`) into `destination`
        (`owner/name`, a model that exists); returns the job, of kind `training`. Once it succeeds the
        job's output names the new version and its weights file, archived like any output file.
        `deadline` as for `submit` (default RELAY_DEFAULT_TRAINING_DEADLINE), enforced by the
        reconciler: Replicate takes no deadline for trainings. Raises as `submit` does."""
        ref = version if isinstance(version, ModelRef) else ModelRef.parse(version)
        return self._submitting(webhook_events).submit_training(
            ref, destination=destination, input=dict(input), metadata=metadata, deadline=_duration(deadline)
        )

    def cancel(self, job_id: str) -> Job:
        """Ask Replicate to stop the job's prediction or training, so it stops costing; returns the job,
        `cancel_requested_at` set.

        The job ends `canceled` once Replicate reports it (wait for it with `wait`), or with its own end
        if the run finished first. Calling again is harmless. Raises JobAlreadyFinal if the job is
        final or its run has already ended (it is archiving files), JobNotFound if there is no such
        job, and a RelayError (ReplicateAPIError) if Replicate cannot be reached: the request is kept,
        call again.
        """
        return self._submitting(None).cancel(job_id)

    def _submitting(self, webhook_events: Sequence[str] | None) -> Submitter:
        """The Submitter, with `webhook_events` for this one call when given."""
        if self._submitter is None:
            raise RuntimeError("this RelayClient was made without a Submitter (from_env(submitting=False)?)")
        if webhook_events is None:
            return self._submitter
        from replicate_relay.submit import VALID_EVENTS  # noqa: PLC0415 - see from_env

        events = tuple(webhook_events)
        if not set(events) <= VALID_EVENTS or "completed" not in events:
            raise ConfigError(f"webhook_events must be among {sorted(VALID_EVENTS)} and include completed")
        return replace(self._submitter, events_filter=events)

    def get(self, job_id: str) -> Job | None:
        """The job as it is now (one read, and one more per value kept in the bucket), None if there is no such job."""
        return self._store.load(job_id)

    # ---- waiting without polling ----

    def wait(self, job_id: str, timeout: float) -> Job:
        """Block until the job is final and return it if it succeeded.

        Raises JobFailed (with the job) if it ended failed, canceled or aborted, JobWaitTimeout
        (a TimeoutError, with the last state seen) after `timeout` seconds, JobGone if its document
        is deleted, ClientClosed if close() is called meanwhile. A job id not there yet is waited
        for: a job made by a webhook may appear later. A listener whose stream Firestore ends for
        good (not a transient error: those reconnect) is told nothing more, so the call ends at
        its timeout: give one.
        """
        with closing(self.watch(job_id, timeout)) as states:
            for job in states:
                if job.is_terminal:
                    if job.state != JobState.SUCCEEDED:
                        raise JobFailed(job)
                    return job
        raise AssertionError("watch ended before a final state")  # pragma: no cover - watch raises instead

    def watch(self, job_id: str, timeout: float | None = None) -> Generator[Job, None, None]:
        """The job each time the listener sees it in a new state, in order, ending after a final one.

        The first item is the job as it stands when the listener opens (if it exists). Firestore
        tells a listener the latest version, not every write: a state that lasted less than a
        round trip can be skipped, never repeated or reordered (jobs only move forward). The
        listener opens at the first next() and `timeout` counts from there; JobWaitTimeout is
        raised when it runs out. The listener is closed however the iteration ends: the final
        state, an exception, or the generator closed or dropped early. The final job comes with
        every value; before it, a value kept in the bucket is null (see `Job.stored_values`).
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        listener = self._open(job_id)
        try:
            last: Job | None = None
            while True:
                try:
                    data = listener.next(deadline)
                except queue.Empty:
                    raise JobWaitTimeout(job_id, timeout or 0.0, last) from None
                if data is None:
                    if last is not None:
                        raise JobGone(f"job {job_id} was deleted while watched (last seen {last.state})")
                    continue
                job = Job.from_document(data)
                if last is not None and job.state == last.state:
                    continue  # progress within a state (logs, outputs): not a state change
                last = job
                # A final job comes whole: its values kept in the bucket are read back.
                yield self._store.resolve(job) if job.is_terminal else job
                if job.is_terminal:
                    return
        finally:
            self._close(listener)

    @property
    def open_listeners(self) -> int:
        """Listeners opened by wait/watch and not closed yet (0 whenever no call is in progress)."""
        with self._lock:
            return len(self._listeners)

    @property
    def listeners_opened(self) -> int:
        """Listeners opened since this client was made."""
        with self._lock:
            return self._opened

    def _open(self, job_id: str) -> _Listener:
        listener = _Listener(self._store, job_id)
        with self._lock:
            self._listeners.add(listener)
            self._opened += 1
        return listener

    def _close(self, listener: _Listener) -> None:
        with self._lock:
            self._listeners.discard(listener)
        listener.close()

    # ---- life cycle ----

    def close(self) -> None:
        """Close every listener still open (watch iterators abandoned on other threads) and, if this
        client made it, the Replicate client."""
        with self._lock:
            listeners = list(self._listeners)
            self._listeners.clear()
        for listener in listeners:
            listener.close()
        if self._owns_submitter and self._submitter is not None:
            self._submitter.replicate.close()

    def __enter__(self) -> RelayClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()


def _duration(value: timedelta | str | None) -> timedelta | None:
    """A deadline given as a duration string (`"90s"`, `"off"`) as a timedelta; None stays None (the default)."""
    return parse_duration(value) if isinstance(value, str) else value
