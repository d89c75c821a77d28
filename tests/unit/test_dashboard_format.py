"""The dashboard's pure helpers: secret masking, payload previews, cron in words,
chart geometry and the throughput history's buckets."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

from pgjobs.web.dashboard import charts
from pgjobs.web.dashboard import format as fmt
from pgjobs.web.dashboard.charts import Bucket, failure_rate_chart, throughput_chart
from pgjobs.web.dashboard.history import History
from pgjobs.web.dashboard.render import Dashboard
from tests.conftest import make_settings

SECRETS = {
    "password": "hunter2",
    "user": {"name": "ann", "apiKey": "k-123", "Authorization": "Bearer abc"},
    "client_secret": "s3",
    "access_token": 42,
    "headers": [{"x-api-key": "zzz", "accept": "json"}],
    "passwd": None,
    "tokens_used": 7,
    "note": "password is not a key here",
}


def test_mask_secrets_replaces_values_of_secret_keys_at_any_depth() -> None:
    masked = fmt.mask_secrets(SECRETS)
    assert masked["password"] == fmt.MASK and masked["client_secret"] == fmt.MASK
    assert masked["user"] == {"name": "ann", "apiKey": fmt.MASK, "Authorization": fmt.MASK}
    assert masked["access_token"] == fmt.MASK and masked["passwd"] == fmt.MASK
    assert masked["headers"] == [{"x-api-key": fmt.MASK, "accept": "json"}]
    assert masked["note"] == "password is not a key here"
    assert masked["tokens_used"] == fmt.MASK  # a key *named* like a token is masked
    assert SECRETS["password"] == "hunter2"  # the input is not changed


def test_pretty_json_masks_and_caps() -> None:
    text, cut = fmt.pretty_json(SECRETS, 10_000)
    assert not cut and "hunter2" not in text and "k-123" not in text and fmt.MASK in text
    big = {"blob": "x" * 5000}
    text, cut = fmt.pretty_json(big, 100)
    assert cut and len(text) == 100


@pytest.mark.parametrize("cut", [20, 35, 60, 90, 120, 400])
def test_previews_of_cut_json_never_show_a_secret(cut: int) -> None:
    raw = json.dumps(
        {"to": "a@b.c", "password": "hunter2", "auth": {"token": "t0p"}, "apiKey": "k-123"}
    )
    shown = fmt.preview(raw[:cut], len(raw), 1000)
    for secret in ("hunter2", "t0p", "k-123"):
        # A prefix of a secret may be cut off the text; none of its characters may show.
        assert secret[:3] not in shown, (cut, shown)
    if cut >= 35:
        assert fmt.MASK in shown


def test_preview_cuts_at_an_object_under_a_secret_key() -> None:
    raw = '{"a": 1, "credentials": {"user": "u", "pw": "p"}, "b": 2}'
    assert fmt.preview(raw, len(raw), 200) == '{"a": 1, "credentials": ' + fmt.MASK + "…"


def test_preview_length_and_ellipsis() -> None:
    assert fmt.preview('{"a": 1}', 8, 100) == '{"a": 1}'
    assert fmt.preview('{"a": "' + "x" * 50, 500, 20).endswith("…")
    assert len(fmt.preview('{"a": "' + "x" * 50, 500, 20)) == 21


@pytest.mark.parametrize(
    ("expression", "words"),
    [
        ("* * * * *", "every minute"),
        ("*/5 * * * *", "every 5 minutes"),
        ("15 * * * *", "every hour at minute 15"),
        ("0 */2 * * *", "every 2 hours at minute 0"),
        ("30 2 * * *", "every day at 02:30"),
        ("0 9,17 * * *", "every day at 09:00 and 17:00"),
        ("0 9 * * 1-5", "at 09:00 on Monday to Friday"),
        ("0 9 * * MON-FRI", "at 09:00 on Monday to Friday"),
        ("0 10 * * 6,0", "at 10:00 on Saturday and Sunday"),
        ("0 8 * * 1,3", "at 08:00 on Monday, Wednesday"),
        ("0 0 1 * *", "at 00:00 on day 1 of every month"),
        ("0 0 1 1 *", "at 00:00 on 1 January"),
        ("@daily", "every day at 00:00"),
        ("@hourly", "every hour at minute 0"),
        ("0 3 * * * 0", "every day at 03:00"),
        ("0 0 1 * 1", None),
        ("*/10 9-17 * * *", None),
        ("0 3 * * * 30", None),
        ("L * * * *", None),
    ],
)
def test_cron_in_words(expression: str, words: str | None) -> None:
    assert fmt.cron_in_words(expression) == words


def test_numbers_times_and_durations() -> None:
    now = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
    assert fmt.number(1234567) == "1,234,567" and fmt.number(None) == "-"
    assert fmt.percent(0.0312) == "3.1%" and fmt.percent(0) == "0%" and fmt.percent(1) == "100%"
    assert fmt.relative(now - timedelta(minutes=3, seconds=5), now) == "3m05s ago"
    assert fmt.relative(now + timedelta(hours=2), now) == "in 2h00m"
    assert fmt.relative(now, now) == "just now"
    assert fmt.timestamp(now) == "2030-01-01 12:00:00Z"
    assert fmt.between(now, now + timedelta(milliseconds=850)) == "850ms"
    assert fmt.between(None, now) == "-"
    assert fmt.rate_per_minute(120, 60) == "2/min" and fmt.rate_per_minute(0, 60) == "0/min"
    assert fmt.rate_per_minute(7, 60) == "7/h" and fmt.rate_per_minute(7, 1440) == "0.29/h"
    assert fmt.rate_per_minute(60_000, 60) == "1,000/min"
    uuid = "0193a1b2-0000-7000-8000-00000000abcd"
    assert fmt.short_id(uuid) == "0193a1b2…abcd"


START = datetime(2030, 1, 1, 11, 45, tzinfo=UTC)


def minutes(*counts: tuple[int, int], start: datetime = START, width: int = 1) -> list[Bucket]:
    return [Bucket(start + timedelta(minutes=i * width), c, f) for i, (c, f) in enumerate(counts)]


def svg(macro: str, chart: object) -> str:
    """A chart as the overview renders it (autoescaped)."""
    env = Dashboard.create(make_settings("postgresql://x@127.0.0.1/x")).templates
    page = env.from_string('{% import "dashboard/_macros.html" as ui %}{{ ui.' + macro + "(c) }}")
    return page.render(c=chart)


@pytest.mark.parametrize(
    ("peak", "values", "labels"),
    [
        (0, [0, 1], ["0", "1"]),
        (1, [0, 1], ["0", "1"]),
        (7, [0, 2, 4, 6, 8], ["0", "2", "4", "6", "8"]),
        (1000, [0, 250, 500, 750, 1000], ["0", "250", "500", "750", "1,000"]),
        (1_000_000, [0, 250_000, 500_000, 750_000, 1_000_000], ["0", "250k", "500k", "750k", "1M"]),
        (3, [0, 1, 2, 3], ["0", "1", "2", "3"]),
        (12_345, [0, 5000, 10_000, 15_000], ["0", "5,000", "10k", "15k"]),
    ],
)
def test_count_axis_ticks(peak: int, values: list[int], labels: list[str]) -> None:
    ticks = charts.count_ticks(peak)
    assert list(ticks) == values
    assert [charts.count_label(v) for v in ticks] == labels
    chart = throughput_chart(minutes((peak, 0)), width_minutes=1, label="x")
    assert [t.label for t in chart.frame.y_ticks] == labels
    # The top tick is the top of the plot; zero sits on the time axis.
    assert chart.frame.y_ticks[0].at == chart.frame.bottom
    assert chart.frame.y_ticks[-1].at == chart.frame.top


@pytest.mark.parametrize(
    ("peak", "labels"),
    [
        (0.0, ["0%", "0.5%", "1%"]),
        (0.03, ["0%", "1%", "2%", "3%", "4%", "5%"]),
        (0.15, ["0%", "5%", "10%", "15%", "20%"]),
        (0.9, ["0%", "25%", "50%", "75%", "100%"]),
    ],
)
def test_rate_axis_ticks(peak: float, labels: list[str]) -> None:
    assert [charts.rate_label(v) for v in charts.rate_ticks(peak)] == labels


def test_time_axis_is_utc_at_round_times() -> None:
    hour = throughput_chart(minutes(*[(1, 0)] * 60), width_minutes=1, label="x")
    assert [t.label for t in hour.frame.x_ticks] == [
        "11:50", "12:00", "12:10", "12:20", "12:30", "12:40"
    ]  # fmt: skip
    assert hour.frame.x_unit == "UTC" and hour.frame.y_unit == "jobs/min"
    # Ticks sit on the left edge of the bucket starting at that time.
    slot = (hour.frame.right - hour.frame.left) / 60
    assert hour.frame.x_ticks[0].at == round(hour.frame.left + 5 * slot, 2)
    day_start = datetime(2030, 1, 1, 13, 0, tzinfo=UTC)
    day = throughput_chart(
        minutes(*[(0, 0)] * 48, start=day_start, width=30), width_minutes=30, label="x"
    )
    assert [t.label for t in day.frame.x_ticks] == [
        "16:00", "20:00", "Jan 02", "04:00", "08:00", "12:00"
    ]  # fmt: skip
    assert day.frame.y_unit == "jobs per 30 min"


def test_throughput_bars_and_tooltips() -> None:
    chart = throughput_chart(minutes((0, 0), (1, 1), (2, 0), (3, 1)), width_minutes=1, label="x")
    assert chart.peak == 4 and chart.completed == 6 and chart.failed == 2
    f = chart.frame
    tallest = chart.bars[3]
    assert tallest.failed_y == f.top and tallest.ok_y + tallest.ok_height == f.bottom
    assert chart.bars[0].ok_height == 0
    assert [b.title for b in chart.bars] == [
        "11:45-11:46 UTC: 0 completed, 0 failed",
        "11:46-11:47 UTC: 1 completed, 1 failed (50.0% failed)",
        "11:47-11:48 UTC: 2 completed, 0 failed",
        "11:48-11:49 UTC: 3 completed, 1 failed (25.0% failed)",
    ]
    html = svg("bar_chart", chart)
    for bar in chart.bars:
        assert f"<title>{bar.title}</title>" in html
    assert ">jobs/min</text>" in html and ">time (UTC)</text>" in html
    assert ">11:50</text>" not in html  # no tick beyond the data
    assert "No data" not in html and 'preserveAspectRatio="none"' not in html


def test_empty_charts_say_so() -> None:
    empty = minutes(*[(0, 0)] * 60)
    bars = throughput_chart(empty, width_minutes=1, label="x")
    rate = failure_rate_chart(empty, width_minutes=1, label="y")
    assert bars.empty and rate.empty and not rate.points and not rate.lines
    for html in (svg("bar_chart", bars), svg("rate_chart", rate)):
        assert "No data: no job finished in this window" in html
        assert ">0</text>" in html or ">0%</text>" in html  # the axes are still drawn
    spark = throughput_chart(empty, width_minutes=60, label="z", width=96, height=20, small=True)
    html = svg("bar_chart", spark)
    assert ">no jobs</text>" in html and "time (UTC)" not in html
    nothing = throughput_chart([], width_minutes=1, label="x")
    assert nothing.empty and "No data" in svg("bar_chart", nothing)


def test_failure_rate_leaves_gaps_where_too_few_jobs_finished() -> None:
    buckets = minutes((0, 0), (1, 1), (9, 1), (8, 2), (0, 0), (4, 4), (10, 0))
    rate = failure_rate_chart(buckets, width_minutes=1, label="y")
    # 1 of 2 failed is not a 50 % failure rate: only buckets of 5+ jobs get a point.
    assert [p.title for p in rate.points] == [
        "11:47-11:48 UTC: 10.0% failed (9 completed, 1 failed)",
        "11:48-11:49 UTC: 20.0% failed (8 completed, 2 failed)",
        "11:50-11:51 UTC: 50.0% failed (4 completed, 4 failed)",
        "11:51-11:52 UTC: 0% failed (10 completed, 0 failed)",
    ]
    # Lines join neighbours only: the empty bucket at 11:49 breaks the line.
    assert len(rate.lines) == 2 and [len(line.split()) for line in rate.lines] == [2, 2]
    assert [g.title for g in rate.gaps] == [
        "11:45-11:46 UTC: no jobs",
        "11:46-11:47 UTC: 1 completed, 1 failed: too few jobs for a rate",
        "11:49-11:50 UTC: no jobs",
    ]
    assert [t.label for t in rate.frame.y_ticks][-1] == "50%"
    assert rate.frame.y_unit == "% failed"
    f = rate.frame
    half = rate.points[2]
    assert half.y == f.top  # 50 % is the top of a 0-50 % axis
    html = svg("rate_chart", rate)
    for p in rate.points:
        assert f"<title>{p.title}</title>" in html
    for g in rate.gaps:
        assert f"<title>{g.title}</title>" in html
    # Only a trickle of jobs: no rate anywhere, and the chart says why.
    trickle = failure_rate_chart(minutes((1, 1), (0, 2)), width_minutes=1, label="y")
    assert trickle.sparse and "Too few jobs for a rate: fewer than 5" in svg("rate_chart", trickle)


def test_chart_text_is_escaped() -> None:
    chart = throughput_chart(minutes((1, 0)), width_minutes=1, label="<script>x</script>")
    html = svg("bar_chart", chart)
    assert "<script>" not in html and "&lt;script&gt;x&lt;/script&gt;" in html


def test_history_buckets_align_to_the_clock() -> None:
    now = datetime(2030, 1, 1, 12, 44, 30, tzinfo=UTC)
    minute = datetime(2030, 1, 1, 12, 44, tzinfo=UTC)
    history = History(
        now=now,
        minutes={
            minute: {"a": (3, 1), "b": (1, 0)},
            minute - timedelta(minutes=20): {"a": (2, 0)},
            minute - timedelta(hours=30): {"a": (100, 100)},  # outside every window
        },
    )
    hour = history.buckets(60, 1)
    assert hour[-1].start == minute and (hour[-1].completed, hour[-1].failed) == (4, 1)
    assert sum(b.completed for b in hour) == 6
    day = history.buckets(48, 30, "a")
    assert day[-1].start == datetime(2030, 1, 1, 12, 30, tzinfo=UTC)
    assert (day[-1].completed, day[-2].completed) == (3, 2)
    assert history.totals(60) == (6, 1) and history.totals(60, "b") == (1, 0)
    assert history.totals(10) == (4, 1)


def test_urls_encode_every_segment() -> None:
    dash = Dashboard.create(make_settings("postgresql://x@127.0.0.1/x"))
    assert dash.url() == "/dashboard"
    assert dash.url("queues", "a.b:c") == "/dashboard/queues/a.b%3Ac"
    assert dash.url("schedules", "javascript:alert") == "/dashboard/schedules/javascript%3Aalert"
    assert dash.url("x", "../y", q="<b>") == "/dashboard/x/..%2Fy?q=%3Cb%3E"
    root = Dashboard.create(make_settings("postgresql://x@127.0.0.1/x", JOBS_DASHBOARD_PATH="/"))
    assert root.url() == "/" and root.url("jobs", "1") == "/jobs/1"
