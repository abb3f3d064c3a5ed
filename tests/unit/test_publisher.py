"""AsyncTopicPublisher: batching per event-loop turn, bounded requests in flight, failures to every waiter."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from replicate_relay.publisher import AsyncTopicPublisher, PublishError


class FakeRpcError(grpc.aio.AioRpcError):
    def __init__(self, code: grpc.StatusCode) -> None:
        super().__init__(code, grpc.aio.Metadata(), grpc.aio.Metadata(), details="fake")


class FakeChannel:
    """Records each Publish request; answers after `delay` seconds, or fails as scripted."""

    def __init__(self, *, delay: float = 0.0, failures: list[grpc.StatusCode] | None = None) -> None:
        self.requests: list[Any] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._delay = delay
        self._failures = list(failures or [])
        self._next_id = 0

    def unary_unary(self, method: str, **_: Any) -> Any:
        assert method == "/google.pubsub.v1.Publisher/Publish"
        return self._publish

    async def _publish(self, request: Any, timeout: float, wait_for_ready: bool = False) -> Any:
        self.requests.append(request)
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self._delay)
            if self._failures:
                raise FakeRpcError(self._failures.pop(0))
            ids = [str(self._next_id + i) for i in range(len(request.messages))]
            self._next_id += len(ids)
            return type("Response", (), {"message_ids": ids})()
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        pass


def publish_many(channel: FakeChannel, count: int, *, deadline: float = 2.0) -> list[str | BaseException]:
    async def run() -> list[str | BaseException]:
        publisher = AsyncTopicPublisher("projects/p/topics/t", deadline_seconds=deadline, channel=channel)
        results = await asyncio.gather(
            *(publisher.publish(b"%d" % i, {"n": str(i)}) for i in range(count)), return_exceptions=True
        )
        await publisher.close()
        return results

    return asyncio.run(run())


def test_messages_published_in_one_loop_turn_share_one_request() -> None:
    channel = FakeChannel()
    results = publish_many(channel, 50)
    assert results == [str(i) for i in range(50)]
    assert len(channel.requests) == 1
    assert [m.data for m in channel.requests[0].messages] == [b"%d" % i for i in range(50)]
    assert dict(channel.requests[0].messages[7].attributes) == {"n": "7"}


def test_requests_in_flight_are_bounded_and_later_messages_batch_up() -> None:
    channel = FakeChannel(delay=0.02)

    async def run() -> list[str]:
        publisher = AsyncTopicPublisher("projects/p/topics/t", deadline_seconds=2.0, channel=channel)
        waiters = []
        for i in range(30):
            waiters.append(asyncio.ensure_future(publisher.publish(b"x", {"i": str(i)})))
            await asyncio.sleep(0.001)  # one message per loop turn
        return list(await asyncio.gather(*waiters))

    results = asyncio.run(run())
    assert len(results) == 30
    assert channel.max_in_flight <= 2
    assert len(channel.requests) < 30  # later messages waited and went together


def test_unavailable_is_retried_within_the_deadline() -> None:
    channel = FakeChannel(failures=[grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAVAILABLE])
    assert publish_many(channel, 3) == ["0", "1", "2"]
    assert len(channel.requests) == 3


@pytest.mark.parametrize("code", [grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED])
def test_a_permanent_error_fails_every_waiter_of_the_batch(code: grpc.StatusCode) -> None:
    results = publish_many(FakeChannel(failures=[code]), 4)
    assert all(isinstance(result, PublishError) for result in results)
    assert code.name in str(results[0])


def test_no_answer_within_the_deadline_is_a_publish_error() -> None:
    results = publish_many(FakeChannel(delay=1.0), 2, deadline=0.1)
    assert all(isinstance(result, PublishError) and "did not acknowledge" in str(result) for result in results)


def test_a_cancelled_caller_does_not_fail_the_rest_of_its_batch() -> None:
    """A client that hangs up cancels its own wait; the batch it joined still goes, and the others get ids."""
    channel = FakeChannel(delay=0.05)

    async def run() -> tuple[list[str], bool]:
        publisher = AsyncTopicPublisher("projects/p/topics/t", deadline_seconds=2.0, channel=channel)
        waiters = [asyncio.ensure_future(publisher.publish(b"%d" % i, {})) for i in range(3)]
        await asyncio.sleep(0.01)  # the batch is in flight
        waiters[1].cancel()
        results = await asyncio.gather(waiters[0], waiters[2])
        cancelled = waiters[1].cancelled()
        await publisher.close()
        return list(results), cancelled

    results, cancelled = asyncio.run(run())
    assert results == ["0", "2"]
    assert cancelled
    assert [m.data for m in channel.requests[0].messages] == [b"0", b"1", b"2"]


def test_the_deadline_timer_is_cancelled_once_answered() -> None:
    """A message answered in time leaves no timer behind to fire later (one per webhook would pile up)."""

    async def run() -> int:
        publisher = AsyncTopicPublisher("projects/p/topics/t", deadline_seconds=60.0, channel=FakeChannel())
        await asyncio.gather(*(publisher.publish(b"x", {}) for _ in range(20)))
        await publisher.close()
        loop = asyncio.get_running_loop()
        return sum(1 for handle in loop._scheduled if not handle.cancelled())  # type: ignore[attr-defined]

    assert asyncio.run(run()) == 0
