"""Replicate's HTTP API as the relay uses it, through Replicate's official Python client."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from replicate.client import Client as ReplicateClient
from replicate.exceptions import ReplicateError

# Defined in the one exception tree, replicate_relay/errors.py; still importable from here.
from replicate_relay.errors import ReplicateAPIError as ReplicateAPIError  # noqa: PLC0414 - re-export

DEFAULT_BASE_URL = "https://api.replicate.com"


@dataclass(frozen=True)
class ModelRef:
    """`owner/name` or `owner/name:version`."""

    owner: str
    name: str
    version: str | None = None

    @classmethod
    def parse(cls, text: str) -> ModelRef:
        path, _, version = text.strip().partition(":")
        owner, slash, name = path.partition("/")
        if not (owner and slash and name) or "/" in name:
            raise ValueError(f"model must look like OWNER/NAME or OWNER/NAME:VERSION, got {text!r}")
        return cls(owner, name, version or None)

    def __str__(self) -> str:
        return f"{self.owner}/{self.name}" + (f":{self.version}" if self.version else "")


@dataclass(frozen=True)
class PredictionPage:
    """One page of `GET /v1/predictions`: newest first, each prediction's JSON as Replicate lists it."""

    results: list[dict[str, Any]]
    next: str | None  # the next page's full URL (it carries Replicate's cursor); None on the last page


class ReplicateAPI:
    """Creates and reads predictions. One instance per process; thread-safe like httpx.Client."""

    def __init__(self, client: ReplicateClient) -> None:
        self._client = client

    @classmethod
    def connect(cls, token: str, *, base_url: str = DEFAULT_BASE_URL, timeout: float = 30.0) -> ReplicateAPI:
        return cls(ReplicateClient(api_token=token, base_url=base_url, timeout=httpx.Timeout(timeout)))

    def create_prediction(
        self, model: ModelRef, input: dict[str, Any], *, webhook: str, events_filter: Sequence[str]
    ) -> str:
        """Start a prediction that reports to `webhook`; returns its id."""
        params: dict[str, Any] = {"input": input, "webhook": webhook, "webhook_events_filter": list(events_filter)}
        with _translated("Replicate refused the prediction"):
            if model.version:
                prediction = self._client.predictions.create(version=model.version, **params)
            else:
                prediction = self._client.predictions.create(model=f"{model.owner}/{model.name}", **params)
        return str(prediction.id)

    def close(self) -> None:
        """Close the client's HTTP connections (the client itself has no close method)."""
        self._client._client.close()

    def get_prediction(self, prediction_id: str) -> bytes:
        """The prediction's JSON exactly as Replicate returns it (the same body its webhooks carry).

        Read through the client's own authenticated HTTP session rather than
        `predictions.get()`, whose model rejects statuses it does not list, such as `aborted`.
        """
        with _translated(f"cannot read prediction {prediction_id}"):
            response = self._client._request("GET", f"/v1/predictions/{prediction_id}")
        return bytes(response.content)

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


@contextmanager
def _translated(refused: str) -> Iterator[None]:
    """The client's errors as ReplicateAPIError: Replicate's answer, or no answer at all."""
    try:
        yield
    except ReplicateError as error:
        raise ReplicateAPIError(f"{refused}: {error.detail or error}", status=error.status) from None
    except httpx.HTTPError as error:
        raise ReplicateAPIError(f"cannot reach Replicate: {type(error).__name__}: {error}", status=None) from None
