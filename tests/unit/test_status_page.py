"""The status page: rendering (escaping, the latency chart, the error panel) and its HTTP function."""

from __future__ import annotations

import json
import re
import socket
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import flask
import functions_framework
import pytest

from replicate_relay import cli
from replicate_relay.devstack.processes import free_port
from replicate_relay.jobs import Job
from replicate_relay.ops import statuspage
from replicate_relay.ops.chart import MAX_BAR_WIDTH, latency_chart, latency_points, nice_step, percentile
from replicate_relay.ops.errors import OpsError
from replicate_relay.ops.status import PUSH_LOCALLY, Status, SubscriptionStatus
from replicate_relay.ops.statuspage import PageData, render_error, render_page
from replicate_relay.ops.usage import PriceTable
from replicate_relay.serve import PerProcess

NOW = datetime(2026, 11, 29, 15, 0, tzinfo=UTC)
REPO_ROOT = Path(__file__).resolve().parents[2]
HOSTILE = '<script>alert("x")</script>'


def status(**changes: object) -> Status:
    fields: dict[str, object] = {
        "project": "demo",
        "at": NOW,
        "subscriptions": [
            SubscriptionStatus("job-status", "push", None, False, None, PUSH_LOCALLY),
            SubscriptionStatus("job-status-dead-letter", "dead-letter (pull)", 3, False, 90.0, "counted by pulling"),
        ],
        "jobs_by_state": {"submitted": 0, "succeeded": 2, "failed": 1},
        "stuck_jobs": 0,
        "stuck_after_seconds": 600,
        "last_event_at": NOW - timedelta(seconds=42),
        "verification_failures": "2 in the last hour (bad_signature 2; local metrics file)",
        "verification_failures_by_reason": {"bad_signature": 2},
    }
    fields.update(changes)
    return Status(**fields)  # type: ignore[arg-type]


def finished(job_id: str, seconds: float, *, minutes_ago: float = 5, state: str = "succeeded", **extra: object) -> Job:
    completed = NOW - timedelta(minutes=minutes_ago)
    return Job.model_validate(
        {
            "job_id": job_id,
            "state": state,
            "completed_at": completed,
            "updated_at": completed + timedelta(seconds=seconds),
            **extra,
        }
    )


def bars(page: str) -> list[str]:
    return re.findall(r"<rect [^>]*><title>[^<]*</title></rect>", page)


# Rendering -------------------------------------------------------------------------------------


def test_everything_from_outside_is_escaped_job_ids_errors_models_and_outputs() -> None:
    job = finished(
        HOSTILE,
        1.5,
        state="failed",
        prediction_id="p<1>",
        model='m"odel',
        error=f"boom {HOSTILE}",
        error_code="failed",
    )

    page = render_page(PageData(status(), [job]))

    assert "<script" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in page
    assert "p&lt;1&gt;" in page
    assert "m&#34;odel" in page
    assert "failed: boom &lt;script&gt;" in page


def test_the_page_refreshes_itself_and_loads_nothing_from_anywhere_else() -> None:
    page = render_page(PageData(status(), [finished("j1", 0.2)]))

    assert '<meta http-equiv="refresh" content="10">' in page
    assert "<script" not in page
    assert " src=" not in page
    assert re.findall(r"https?://[^\"' ]+", page) == ["http://www.w3.org/2000/svg"]  # the SVG namespace only


def test_the_page_shows_the_same_figures_as_relay_status() -> None:
    page = render_page(PageData(status(stuck_jobs=4), []))

    assert 'id="stuck-jobs">4<' in page
    assert 'id="verification-failures">2<' in page
    assert "2 in the last hour (bad_signature 2; local metrics file)" in page
    assert "n/a locally (Cloud Monitoring in production)" in page
    assert "job-status-dead-letter" in page
    assert "1m" in page  # the dead letter's oldest age
    assert "42s" in page
    assert "No jobs yet." in page


def test_verification_failures_that_cannot_be_had_show_as_not_available() -> None:
    page = render_page(
        PageData(status(verification_failures="n/a: no local metrics file", verification_failures_by_reason=None), [])
    )

    assert 'id="verification-failures">n/a<' in page
    assert "n/a: no local metrics file" in page


def test_the_chart_with_no_finished_jobs_is_still_an_svg_that_says_so() -> None:
    unfinished = Job(job_id="open", state="processing", updated_at=NOW)

    page = render_page(PageData(status(), [unfinished]))

    assert '<svg id="latency-chart"' in page
    assert bars(page) == []
    assert "no finished jobs among the recent ones yet" in page
    assert "open" in page  # still listed among recent jobs


def test_the_chart_with_one_job_draws_one_bar_no_wider_than_the_cap_and_full_height_at_its_scale() -> None:
    chart = latency_chart(latency_points([finished("only", 0.8)]))

    assert len(chart.bars) == 1
    bar = chart.bars[0]
    assert bar.width == MAX_BAR_WIDTH
    assert bar.label == "only: succeeded, 800 ms"
    assert chart.ticks[-1].label == "0.8 s"  # the axis ends at the bar: nice_step(0.8) is 0.2
    assert bar.y == pytest.approx(chart.ticks[-1].y)
    assert chart.summary == "1 job · p50 800 ms · p95 800 ms · max 800 ms"


def test_the_chart_with_many_jobs_puts_the_oldest_left_scales_to_the_slowest_and_colours_by_state() -> None:
    jobs = [
        finished("newest", 1.0, minutes_ago=1, state="failed"),
        finished("middle", 12.0, minutes_ago=2),
        finished("oldest", 3.0, minutes_ago=3, state="aborted"),
        Job(job_id="running", state="processing", updated_at=NOW),
        finished("no-completion-time", 2.0, completed_at=None),
    ]

    chart = latency_chart(latency_points(jobs))
    page = render_page(PageData(status(), jobs))

    assert [bar.label.split(":")[0] for bar in chart.bars] == ["oldest", "middle", "newest"]
    assert [bar.x for bar in chart.bars] == sorted(bar.x for bar in chart.bars)
    tallest = max(chart.bars, key=lambda bar: bar.height)
    assert tallest.label.startswith("middle")
    assert chart.ticks[-1].label == "15 s"
    assert [bar.colour for bar in chart.bars] == ["#ef6c00", "#2e7d32", "#c62828"]
    assert len(bars(page)) == 3
    assert "3 jobs · p50 3.00 s · p95 12.00 s · max 12.00 s" in page


def test_a_final_write_before_replicates_completion_time_counts_as_zero_not_negative() -> None:
    skewed = finished("skewed", -2.0)

    assert latency_points([skewed])[0].seconds == 0.0


@pytest.mark.parametrize(
    ("largest", "step"), [(0.0, 0.25), (0.8, 0.2), (3.0, 1.0), (12.0, 5.0), (95.0, 50.0), (400.0, 100.0)]
)
def test_axis_steps_are_one_two_or_five_times_a_power_of_ten(largest: float, step: float) -> None:
    assert nice_step(largest) == pytest.approx(step)


def test_percentiles_are_nearest_rank() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 95) == 4.0
    assert percentile([7.0], 50) == 7.0


def test_the_error_panel_shows_the_one_sentence_escaped_and_nothing_else() -> None:
    page = render_error(f"cannot reach the Pub/Sub emulator {HOSTILE}", project="demo", now=NOW)

    assert 'role="alert"' in page
    assert "cannot reach the Pub/Sub emulator &lt;script&gt;" in page
    assert "<svg" not in page
    assert "Traceback" not in page
    assert '<meta http-equiv="refresh" content="10">' in page


# The HTTP function -----------------------------------------------------------------------------


@pytest.fixture
def fresh_clients(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(statuspage, "_CLIENTS", PerProcess(statuspage._make_clients))


@pytest.fixture
def emulators_down(monkeypatch: pytest.MonkeyPatch, fresh_clients: None) -> str:
    """Emulator variables pointing at ports nothing listens on, with a short timeout."""
    pubsub = f"127.0.0.1:{free_port()}"
    monkeypatch.setenv("PUBSUB_EMULATOR_HOST", pubsub)
    monkeypatch.setenv("FIRESTORE_EMULATOR_HOST", f"127.0.0.1:{free_port()}")
    monkeypatch.setenv("RELAY_PROJECT", "local-project")
    monkeypatch.setenv(statuspage.TIMEOUT_VARIABLE, "0.5")
    return pubsub


def call(path: str, method: str = "GET") -> flask.Response:
    with flask.Flask(__name__).test_request_context(path, method=method):
        return statuspage.status_page(flask.request)


def test_an_emulator_that_is_not_running_is_an_error_panel_with_its_one_sentence_and_503(emulators_down: str) -> None:
    response = call("/")

    assert response.status_code == 503
    assert response.mimetype == "text/html"
    page = response.get_data(as_text=True)
    sentence = f"cannot reach the Pub/Sub emulator at {emulators_down} (PUBSUB_EMULATOR_HOST) in 0.5 s: is it running?"
    assert f'<p id="error-message">{sentence}</p>' in page
    assert "Traceback" not in page


def test_the_json_of_an_unreachable_emulator_is_its_one_sentence_and_503(emulators_down: str) -> None:
    response = call("/status.json")

    assert response.status_code == 503
    assert json.loads(response.get_data())["error"].startswith("cannot reach the Pub/Sub emulator at")


def test_an_unexpected_failure_is_a_500_panel_without_a_traceback(
    monkeypatch: pytest.MonkeyPatch, emulators_down: str
) -> None:
    def explode(*_: object, **__: object) -> PageData:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(statuspage, "collect_page", explode)

    response = call("/")

    assert response.status_code == 500
    page = response.get_data(as_text=True)
    assert "the status page failed unexpectedly; its logs have the details" in page
    assert "secret internals" not in page
    assert "Traceback" not in page


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_only_get_and_head_are_allowed(method: str) -> None:
    response = call("/", method)

    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"


def test_any_other_path_is_404_naming_the_two_that_exist() -> None:
    response = call("/admin")

    assert response.status_code == 404
    assert "/status.json" in response.get_data(as_text=True)


def test_functions_framework_serves_the_target_from_the_file_the_deployment_names(
    monkeypatch: pytest.MonkeyPatch, emulators_down: str
) -> None:
    # functions-framework appends the file's folder to sys.path and registers it as a top-level
    # module; both are undone after the test.
    monkeypatch.setattr(sys, "path", [*sys.path])
    monkeypatch.setitem(sys.modules, "statuspage", None)
    app = functions_framework.create_app(
        target="status_page", source=str(REPO_ROOT / "replicate_relay/ops/statuspage.py")
    )
    client = app.test_client()

    assert client.post("/").status_code == 405
    head = client.head("/")
    assert head.status_code == 503
    assert head.get_data() == b""


def test_serving_on_a_port_already_taken_is_one_sentence_naming_it() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]

        with pytest.raises(OpsError) as raised:
            statuspage.serve("127.0.0.1", port)

    assert (
        str(raised.value)
        == f"cannot serve the status page on 127.0.0.1:{port}: Address already in use (try another --port)"
    )


# GPU seconds and estimates ---------------------------------------------------------------------


def timed(job_id: str, predict: float, **extra: object) -> Job:
    return finished(job_id, 0.5, model="acme/flux", metrics={"predict_time": predict}, **extra)


def usage_rows(page: str) -> list[list[str]]:
    table = re.search(r'<table id="usage">(.*?)</table>', page, re.S)
    assert table is not None
    rows = re.findall(r"<tr>(.*?)</tr>", table.group(1), re.S)
    return [[re.sub(r"<[^>]+>", "", cell) for cell in re.findall(r"<t[dh][^>]*>(.*?)</t[dh]>", row)] for row in rows]


def test_gpu_seconds_of_the_last_24_h_by_deployment_or_model_and_no_cost_without_a_price_table() -> None:
    jobs = [
        timed("j1", 2.5),
        timed("j2", 1.0),
        timed("j3", 7.0, deployment="acme/flux-prod"),
        timed("j4", 99.0, minutes_ago=25 * 60),  # ended before the window
    ]

    page = render_page(PageData(status(), jobs))

    assert usage_rows(page) == [
        ["deployment / model", "kind", "final jobs", "GPU seconds (predict_time)"],
        ["deployment acme/flux-prod", "prediction", "1", "7.00"],
        ["model acme/flux", "prediction", "2", "3.50"],
        ["total", "", "3", "10.50"],
    ]
    assert "From every job that ended in the last 24 h." in page
    assert "estimate" not in page
    assert "$" not in page


def test_with_a_price_table_each_row_and_job_has_a_cost_marked_as_an_estimate() -> None:
    prices = PriceTable.parse(json.dumps({"models": {"acme/flux": 0.001}}), source="RELAY_PRICE_TABLE")
    jobs = [timed("j1", 2.5), timed("j2", 1.0), timed("j3", 7.0, deployment="acme/flux-prod")]

    page = render_page(PageData(status(), jobs, prices=prices))

    assert usage_rows(page) == [
        ["deployment / model", "kind", "final jobs", "GPU seconds (predict_time)", "cost estimate (USD)"],
        ["deployment acme/flux-prod", "prediction", "1", "7.00", "- (1 unpriced)"],
        ["model acme/flux", "prediction", "2", "3.50", "$0.0035"],
        ["total", "", "3", "10.50", "$0.0035"],
    ]
    note = re.search(r'<p class="meta" id="usage-estimate-note">(.*?)</p>', page)
    assert note is not None
    assert note.group(1).startswith("Cost estimates: predict time × USD per second from RELAY_PRICE_TABLE.")
    recent = re.search(r'<table id="recent-jobs">(.*?)</table>', page, re.S)
    assert recent is not None
    assert "<th>predict s</th><th>estimate</th>" in recent.group(1)
    assert '<td class="num">2.50</td><td class="num">$0.0025</td>' in recent.group(1)
    assert '<td class="num">7.00</td><td class="num">no price</td>' in recent.group(1)


def test_gpu_seconds_say_how_far_back_they_reach_when_the_recent_jobs_do_not_cover_24_h() -> None:
    jobs = [timed(f"j{n}", 1.0, minutes_ago=60 + n) for n in range(statuspage.RECENT_JOBS)]

    page = render_page(PageData(status(), jobs))

    coverage = re.search(r'<p class="meta" id="usage-coverage">(.*?)</p>', page)
    assert coverage is not None
    assert coverage.group(1).startswith(f"From only the {statuspage.RECENT_JOBS} most recently written jobs")
    assert "reach back 1h" in coverage.group(1)


def test_relay_status_serve_with_a_malformed_price_table_stops_before_serving(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RELAY_PRICE_TABLE", '{"deployments": {"acme/x": -1}}')

    assert cli.main(["status", "--serve", "--port", str(free_port())]) == 2

    message = "relay: RELAY_PRICE_TABLE: deployments['acme/x'] must be USD per second, a number ≥ 0, got -1\n"
    assert capsys.readouterr().err == message
