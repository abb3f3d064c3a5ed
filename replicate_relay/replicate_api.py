"""Replicate's HTTP API as the relay uses it, through Replicate's official Python client's session."""

from __future__ import annotations

import email.utils
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import httpx
from replicate.client import Client as ReplicateClient
from replicate.exceptions import ReplicateError

# Defined in the one exception tree, replicate_relay/errors.py; still importable from here.
from replicate_relay.errors import ReplicateAPIError as ReplicateAPIError  # noqa: PLC0414 - re-export

DEFAULT_BASE_URL = "https://api.replicate.com"

Kind = Literal["prediction", "training"]


def _owner_and_name(text: str, what: str) -> tuple[str, str, str]:
    """`owner`, `name` and what follows a `:` in `owner/name[:rest]`; ValueError naming `what`."""
    path, _, rest = text.strip().partition(":")
    owner, slash, name = path.partition("/")
    if not (owner and slash and name) or "/" in name:
        raise ValueError(f"{what}, got {text!r}")
    return owner, name, rest


@dataclass(frozen=True)
class ModelRef:
    """`owner/name` or `owner/name:version`."""

    owner: str
    name: str
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        owner, name, version = _owner_and_name(text, "model must look like OWNER/NAME or OWNER/NAME:VERSION")
        return cls(owner, name, version or None)

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}" + (f":{self.version}" if self.version else "")


@dataclass(frozen=True)
class DeploymentRef:
    """`owner/name` of a deployment: Replicate runs its pinned version on the deployment's own hardware."""

    owner: str
    name: str

    @classmethod
    def parse(cls, text: str) -> DeploymentRef:
        owner, name, version = _owner_and_name(text, "deployment must look like OWNER/NAME")
        if version:
            raise ValueError(f"deployment must look like OWNER/NAME (a deployment pins its version), got {text!r}")
        return cls(owner, name)

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}"


@dataclass(frozen=True)
class PredictionPage:
    """One page of `GET /v1/predictions`: newest first, each prediction's JSON as Replicate lists it."""

    results: list[dict[str, Any]]
    next: str | None  # the next page's full URL (it carries Replicate's cursor); None on the last page


@dataclass(frozen=True)
class Backoff:
    """How a create answered 429 is tried again: at most `tries` requests, and never a wait that would
    end more than `budget` seconds after the first request began.

    Each wait is Replicate's `Retry-After` (else 1, 2, 4 s…), plus up to `jitter` of itself, so
    processes throttled together do not come back together, and never sooner than Replicate asked.
    A wait past the budget is not slept: the create fails at once. With the defaults a create gives
    up after 4 tries or about a minute, whichever comes first: long enough to ride out a burst
    over Replicate's 600 creates a minute, short enough for a caller that is waiting on it.
    """

    tries: int = 4
    budget: float = 60.0
    jitter: float = 0.2

    def wait(self, attempt: int, retry_after: float | None, rng: random.Random) -> float:
        """Seconds to wait after the `attempt`-th throttled request (1-based)."""
        base = retry_after if retry_after is not None else float(2 ** (attempt - 1))
        return base * (1.0 + rng.uniform(0.0, self.jitter))


class ReplicateAPI:
    """Creates, reads and cancels predictions and trainings. One instance per process; thread-safe
    like httpx.Client.

    Every call goes through the official client's authenticated session (`_request`, as the client's
    own methods do) rather than its typed methods: those take no extra headers (`Cancel-After`),
    and their models reject statuses they do not list, such as `aborted`.
    """

    def __init__(
        self,
        client: ReplicateClient,
        *,
        backoff: Backoff = Backoff(),
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._backoff = backoff
        self._sleep = sleep
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - jitter, not a secret

    @classmethod
    def connect(
        cls, token: str, *, base_url: str = DEFAULT_BASE_URL, timeout: float = 30.0, backoff: Backoff = Backoff()
    ) -> ReplicateAPI:
        return cls(ReplicateClient(api_token=token, base_url=base_url, timeout=httpx.Timeout(timeout)), backoff=backoff)

    def create_prediction(
        self,
        target: ModelRef | DeploymentRef,
        input: dict[str, Any],
        *,
        webhook: str,
        events_filter: Sequence[str],
        cancel_after: timedelta | None = None,
    ) -> str:
        """Start a prediction of a model, a version or a deployment that reports to `webhook`; returns its id.

        `cancel_after` is sent as Replicate's `Cancel-After` header: past it, Replicate ends the
        prediction `aborted` if it has not started, `canceled` if it has.
        """
        body: dict[str, Any] = {"input": input, "webhook": webhook, "webhook_events_filter": list(events_filter)}
        if isinstance(target, DeploymentRef):
            path = f"/v1/deployments/{target.owner}/{target.name}/predictions"
        elif target.version:
            path, body["version"] = "/v1/predictions", target.version
        else:
            path = f"/v1/models/{target.owner}/{target.name}/predictions"
        headers = {"Cancel-After": cancel_after_header(cancel_after)} if cancel_after is not None else {}
        return self._create(path, body, headers, what="prediction")

    def create_training(
        self,
        version: ModelRef,
        *,
        destination: str,
        input: dict[str, Any],
        webhook: str,
        events_filter: Sequence[str],
    ) -> str:
        """Start a training of `version` (which must name its version id) into the model `destination`
        (`owner/name`) that reports to `webhook`; returns its id."""
        if not version.version:
            raise ValueError(f"a training needs a version: OWNER/NAME:VERSION, got {version}")
        path = f"/v1/models/{version.owner}/{version.name}/versions/{version.version}/trainings"
        body = {
            "destination": destination,
            "input": input,
            "webhook": webhook,
            "webhook_events_filter": list(events_filter),
        }
        return self._create(path, body, {}, what="training")

    def get_prediction(self, prediction_id: str) -> bytes:
        """The prediction's JSON exactly as Replicate returns it (the same body its webhooks carry)."""
        return self._raw("GET", f"/v1/predictions/{prediction_id}", f"cannot read prediction {prediction_id}")

    def get_training(self, training_id: str) -> bytes:
        """The training's JSON exactly as Replicate returns it (the same body its webhooks carry)."""
        return self._raw("GET", f"/v1/trainings/{training_id}", f"cannot read training {training_id}")

    def cancel(self, kind: Kind, replicate_id: str) -> bytes:
        """Ask Replicate to cancel a prediction or training; its JSON as Replicate answers. Replicate
        reports the end with the `completed` webhook (status `canceled`), or the run's own end if it
        finished first: canceling a finished run changes nothing."""
        return self._raw("POST", f"/v1/{kind}s/{replicate_id}/cancel", f"cannot cancel {kind} {replicate_id}")

    def close(self) -> None:
        """Close the client's HTTP connections (the client itself has no close method)."""
        self._client._client.close()

    def list_predictions(self, cursor: str | None = None) -> PredictionPage:
        """One page of the account's predictions, newest first; `cursor` is the previous page's `next`.

        Read raw, as get_prediction is. The client's transport already retries a GET answered 429,
        503 or 504 (Retry-After honoured) before an error reaches here. The `next` URL must point at
        the API this client talks to: the token is sent with it.
        """
        base = self._client._client.base_url
        if cursor is not None:
            url = httpx.URL(cursor)
            if (url.scheme, url.host, url.port) != (base.scheme, base.host, base.port):
                raise ReplicateAPIError(f"refusing a next page on another host: {url.scheme}://{url.host}", status=None)
        with _translated("cannot list predictions"):
            response = self._client._request("GET", cursor or "/v1/predictions")
        try:
            document = response.json()
        except ValueError:
            raise ReplicateAPIError("the prediction list is not JSON", status=response.status_code) from None
        results = document.get("results") if isinstance(document, dict) else None
        following = document.get("next") if isinstance(document, dict) else None
        if not isinstance(results, list) or not all(isinstance(item, dict) for item in results):
            raise ReplicateAPIError("the prediction list has no list of results", status=response.status_code)
        if following is not None and not isinstance(following, str):
            raise ReplicateAPIError("the prediction list's next is not a URL", status=response.status_code)
        return PredictionPage(results=results, next=following or None)

    def _raw(self, method: str, path: str, refused: str) -> bytes:
        # The client's transport retries a GET answered 429, 503 or 504; a POST it sends once.
        with _translated(refused):
            response = self._client._request(method, path)
        return bytes(response.content)

    def _create(self, path: str, body: dict[str, Any], headers: dict[str, str], *, what: str) -> str:
        """POST a create, tried again while Replicate answers 429 (see Backoff); the new run's id.

        Only 429 is tried again: Replicate refused that request before doing anything. A 5xx or a
        lost connection may have created the run, and a second create would start (and bill) a
        second one, so those are the caller's to handle.
        """
        began = self._clock()
        attempt = 0
        while True:
            attempt += 1
            with _translated(f"Replicate refused the {what}"):
                response = self._client._client.request("POST", path, json=body, headers=headers)
                if response.status_code != 429 and response.status_code >= 400:
                    raise ReplicateError.from_response(response)
            if response.status_code != 429:
                return _created_id(response, what)
            retry_after = _retry_after(response.headers.get("retry-after"))
            wait = self._backoff.wait(attempt, retry_after, self._rng)
            elapsed = self._clock() - began
            if attempt >= self._backoff.tries or elapsed + wait > self._backoff.budget:
                raise ReplicateAPIError(
                    f"Replicate throttled the {what} create {attempt} times in {elapsed:.1f} s (429, Retry-After "
                    f"{response.headers.get('retry-after') or '-'}); not tried again past {self._backoff.tries} "
                    f"tries or {self._backoff.budget:g} s: try later",
                    status=429,
                )
            self._sleep(wait)


def cancel_after_header(duration: timedelta) -> str:
    """`Cancel-After`'s value: whole seconds, rounded up, as Replicate writes durations (`1h30m`, `45s`)."""
    seconds = max(1, math.ceil(duration.total_seconds()))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    parts = [f"{value}{unit}" for value, unit in ((hours, "h"), (minutes, "m"), (seconds, "s")) if value]
    return "".join(parts)


def _retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds: a number of seconds or an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        return max(0.0, seconds) if math.isfinite(seconds) else None
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _created_id(response: httpx.Response, what: str) -> str:
    try:
        created = response.json()
    except ValueError:
        created = None
    run_id = created.get("id") if isinstance(created, dict) else None
    if not isinstance(run_id, str) or not run_id:
        raise ReplicateAPIError(f"Replicate's answer to the {what} create has no id", status=response.status_code)
    return run_id


@contextmanager
def _translated(refused: str) -> Iterator[None]:
    """The client's errors as ReplicateAPIError: Replicate's answer, or no answer at all."""
    try:
        yield
    except ReplicateError as error:
        raise ReplicateAPIError(f"{refused}: {error.detail or error}", status=error.status) from None
    except httpx.HTTPError as error:
        raise ReplicateAPIError(f"cannot reach Replicate: {type(error).__name__}: {error}", status=None) from None
