"""Property-based tests of replicate_relay/values.py, nothing running: any JSON a model takes or returns
(tests/any_json.py)
becomes JSON text Firestore accepts and reads back exactly, a job's values are split between the document and the
bucket within the budget, a value stored in the bucket (a fake one here) comes back as it went in, and a job read
from its Firestore form (Job.document, Job.from_document) has the values it was written with.

The same values go through the real pipeline in tests/integration/test_any_json_properties.py.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
from google.api_core import exceptions as google_exceptions
from hypothesis import given, settings
from hypothesis import strategies as st

from replicate_relay.jobs import Job, output_value
from replicate_relay.values import (
    VALUE_FIELDS,
    StoredValue,
    Unstorable,
    ValueStore,
    dumps,
    is_utf8,
    loads,
    object_name,
    place,
    text_size,
)
from tests.any_json import input_values, json_values, keys, long_text, same_json, short_text

PROPERTY = settings(deadline=None)


class FakeBlob:
    """The two calls ValueStore makes of a Cloud Storage blob, on a dict."""

    def __init__(self, objects: dict[str, bytes], name: str) -> None:
        self._objects = objects
        self.name = name

    def upload_from_string(
        self, data: bytes, *, content_type: str, if_generation_match: int | None = None, checksum: str | None = None
    ) -> None:
        if if_generation_match == 0 and self.name in self._objects:
            raise google_exceptions.PreconditionFailed("the object exists")
        self._objects[self.name] = data

    def download_as_bytes(self, *, checksum: str | None = None) -> bytes:
        if self.name not in self._objects:
            raise google_exceptions.NotFound(self.name)
        return self._objects[self.name]


class FakeBucket:
    name = "unit-test-bucket"

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}

    def blob(self, name: str) -> FakeBlob:
        return FakeBlob(self.objects, name)


@PROPERTY
@given(value=json_values)
def test_any_json_value_reads_back_from_its_text_exactly_and_the_text_is_validis_utf8(value: Any) -> None:
    text = dumps(value)
    text.encode("utf-8")  # what Firestore stores: a string must be valid UTF-8, so no lone surrogate in it
    assert same_json(value, loads(text))
    # One value, one text: a retried write names the same bucket object (object_name is content-addressed).
    assert dumps(loads(text)) == text
    assert text_size(text) == len(text.encode("utf-8"))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, {"a": [1, math.nan]}])
def test_what_json_cannot_say_is_unstorable(value: Any) -> None:
    with pytest.raises(Unstorable):
        dumps(value)


@PROPERTY
@given(
    values=st.dictionaries(st.sampled_from(VALUE_FIELDS), json_values, max_size=len(VALUE_FIELDS)),
    inline_bytes=st.one_of(st.integers(0, 4_096), st.integers(0, 300_000)),
)
def test_placing_a_jobs_values_keeps_each_once_within_the_budget_moving_the_largest(
    values: dict[str, Any], inline_bytes: int
) -> None:
    texts = {name: dumps(value) for name, value in values.items()}
    placement = place(texts, inline_bytes)
    assert {**placement.inline, **placement.to_bucket} == texts  # every value once, unchanged
    assert not placement.inline.keys() & placement.to_bucket.keys()
    inline_sizes = [text_size(text) for text in placement.inline.values()]
    assert sum(inline_sizes) <= inline_bytes
    if sum(text_size(text) for text in texts.values()) <= inline_bytes:
        assert placement.to_bucket == {}  # nothing leaves a document that holds it all
    moved_sizes = [text_size(text) for text in placement.to_bucket.values()]
    if moved_sizes and inline_sizes:
        assert min(moved_sizes) >= max(inline_sizes)  # the largest go first, so the fewest objects


@PROPERTY
@given(value=json_values, field=st.sampled_from(VALUE_FIELDS), job_id=st.text("abc123_-", min_size=1, max_size=20))
def test_a_value_put_in_the_bucket_reads_back_exactly_and_putting_it_again_is_a_no_op(
    value: Any, field: str, job_id: str
) -> None:
    bucket = FakeBucket()
    values = ValueStore(bucket)  # type: ignore[arg-type]
    text = dumps(value)
    stored = values.put(job_id, field, text)
    assert stored.gs_uri == f"gs://{bucket.name}/{object_name(job_id, field, text)}"
    assert stored.size == text_size(text)
    assert values.put(job_id, field, text) == stored  # a retried write finds its object there
    assert list(bucket.objects) == [object_name(job_id, field, text)]
    assert same_json(value, values.get(stored))
    # The link survives the document: it is written and read back as a map.
    assert same_json(value, values.get(StoredValue.model_validate(stored.model_dump())))


@PROPERTY
@given(value=json_values, other=json_values)
def test_an_object_that_is_not_what_its_link_describes_is_refused(value: Any, other: Any) -> None:
    bucket = FakeBucket()
    values = ValueStore(bucket)  # type: ignore[arg-type]
    stored = values.put("job", "output", dumps(value))
    [name] = bucket.objects
    replaced = dumps(other).encode("utf-8")
    bucket.objects[name] = replaced
    if replaced == dumps(value).encode("utf-8"):
        assert same_json(value, values.get(stored))
    else:
        with pytest.raises(ValueError, match="does not match"):
            values.get(stored)


@PROPERTY
@given(
    input=st.one_of(st.none(), input_values),
    output=json_values,
    error=json_values,
    metrics=st.one_of(st.none(), st.dictionaries(keys, json_values, max_size=3)),
    logs=st.one_of(st.none(), short_text, long_text),
    left_out=st.sets(st.sampled_from(VALUE_FIELDS)),
)
def test_a_job_read_from_its_document_has_the_values_it_was_written_with(
    input: dict[str, Any] | None,
    output: Any,
    error: Any,
    metrics: dict[str, Any] | None,
    logs: str | None,
    left_out: set[str],
) -> None:
    job = Job(job_id="j1", input=input, output=output, error=error, metrics=metrics, logs=logs, stored_values={})
    texts = {name: dumps(value) for name in VALUE_FIELDS if (value := getattr(job, name)) is not None}
    inline = {name: text for name, text in texts.items() if name not in left_out}  # the others: in the bucket
    document = job.document(inline)
    assert not any(isinstance(value, str) and not is_utf8(value) for value in document.values())
    read = Job.from_document(document)
    for name in VALUE_FIELDS:
        expected = getattr(job, name) if name in inline else None
        assert same_json(expected, getattr(read, name)), name
    assert same_json(output_value(read.output), read.output_value)
    written = job.model_dump(exclude={*VALUE_FIELDS, "output_value"})
    assert read.model_dump(exclude={*VALUE_FIELDS, "output_value"}) == written  # and the rest of the job as it was
