"""`relay verify` against the local stack: the command a person runs, as a subprocess with `relay dev`'s
environment, green on a working stack and naming the hop on a broken one."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from google.cloud import firestore, pubsub_v1, storage

from replicate_relay.devstack.stack import LocalStack
from replicate_relay.jobstore import JOBS, PREDICTIONS

CHECKS = [
    "receiver accepted 3 signed webhooks",
    "job final in Firestore",
    "output in the bucket, CRC32C matches",
    "exactly one job-event",
    "API answers for the job",
    "one trace from the receiver to both handlers",
]


def _verify(stack: LocalStack, *args: str, **env: str) -> tuple[int, str, str]:
    environ = {**os.environ, **stack.client_env, **env}
    result = subprocess.run(  # noqa: S603 - our own command line, with test arguments
        [sys.executable, "-m", "replicate_relay", "verify", "--timeout", "60", *args],
        capture_output=True,
        text=True,
        env=environ,
        timeout=300,
        check=False,
    )
    match = re.search(r"prediction (relay-verify-[0-9a-f]+)", result.stdout)
    assert match, result.stdout + result.stderr
    return result.returncode, result.stdout, match.group(1)


def _passed(output: str) -> list[str]:
    return [name for name in CHECKS if re.search(rf"✓ {re.escape(name)}\s", output)]


def test_verify_passes_every_check_on_a_working_stack_and_leaves_nothing_behind(
    stack: LocalStack, db: firestore.Client
) -> None:
    code, output, prediction_id = _verify(stack)

    assert code == 0, output
    assert _passed(output) == CHECKS, output
    assert re.search(r"All 6 checks passed in [\d.]+ s\.", output)
    # Cleaned up: the job, its mapping, its objects and the temporary subscription.
    assert not db.collection(JOBS).document(prediction_id).get().exists
    assert not db.collection(PREDICTIONS).document(prediction_id).get().exists
    bucket = stack.client_env["RELAY_BUCKET"]
    assert (
        list(storage.Client(project=stack.config.project).list_blobs(bucket, prefix=f"predictions/{prediction_id}/"))
        == []
    )
    subscriber = pubsub_v1.SubscriberClient()
    names = [s.name for s in subscriber.list_subscriptions(request={"project": f"projects/{stack.config.project}"})]
    assert not [name for name in names if prediction_id in name]


def test_verify_names_the_failing_hop_and_where_to_look(stack: LocalStack, db: firestore.Client) -> None:
    """A receiver that does not hold the secret refuses the first webhook: the first hop fails, the rest
    are not reached, and the output says which commands show why."""
    code, output, prediction_id = _verify(stack, RELAY_WEBHOOK_SECRETS="whsec_" + "A" * 32)

    assert code == 1, output
    assert re.search(r"✗ receiver accepted 3 signed webhooks .* got 401", output), output
    assert output.count("not reached") == len(CHECKS) - 1
    assert f"see: relay jobs show {prediction_id}" in output
    assert f"see: relay trace {prediction_id}" in output
    assert 'FAILED at "receiver accepted 3 signed webhooks"' in output


def test_verify_fails_at_the_bucket_when_the_file_is_not_where_the_target_says(
    stack: LocalStack, db: firestore.Client
) -> None:
    """Every hop before the bucket passes; the check of the object fails and the job is kept for a look."""
    code, output, prediction_id = _verify(stack, "--bucket", "some-other-bucket")

    assert code == 1, output
    assert _passed(output) == CHECKS[:2], output
    assert "✗ output in the bucket, CRC32C matches" in output
    assert "not to the bucket some-other-bucket" in output
    assert f"kept jobs/{prediction_id}" in output
    assert db.collection(JOBS).document(prediction_id).get().exists


def test_verify_skips_the_trace_where_there_is_no_span_file_and_says_so(stack: LocalStack, tmp_path: Path) -> None:
    code, output, _ = _verify(stack, RELAY_TRACE_FILE=str(tmp_path / "none.jsonl"))

    assert code == 0, output
    assert _passed(output) == CHECKS[:-1], output
    assert "- one trace from the receiver to both handlers" in output
    assert "skipped: no span file here" in output
    assert re.search(r"All 5 checks passed, 1 skipped in", output)
