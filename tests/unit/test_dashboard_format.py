"""The dashboard's pure helpers: secret masking, payload previews, cron in words,
chart geometry and the throughput history's buckets."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest

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


def test_throughput_chart_geometry() -> None:
    start = datetime(2030, 1, 1, tzinfo=UTC)
    buckets = [Bucket(start + timedelta(minutes=i), i, i % 2) for i in range(4)]
    chart = throughput_chart(buckets, width_minutes=1, label="x", width=100, height=50)
    assert chart.peak == 4 and chart.completed == 6 and chart.failed == 2
    assert [b.x for b in chart.bars] == [0, 25, 50, 75]
    tallest = chart.bars[3]
    assert tallest.ok_height + tallest.failed_height == 50 and tallest.failed_y == 0
    assert chart.bars[0].ok_height == 0 and "0 completed, 0 failed" in chart.bars[0].title
    empty = throughput_chart(
        [Bucket(start, 0, 0)], width_minutes=1, label="x", width=100, height=50
    )
    assert empty.empty and empty.bars[0].ok_height == 0
    rate = failure_rate_chart(buckets, width_minutes=1, label="y", width=100, height=50)
    # The first bucket has no jobs, so no point; then 1 of 2, 0 of 2, 1 of 4 failed.
    assert rate.points == "37.5,25.0 62.5,50.0 87.5,37.5"


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
