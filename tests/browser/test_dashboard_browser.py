"""The dashboard in a real browser: Debian's chromium driven by Selenium through the
system chromedriver, against a real `pgjobs server` and a real `pgjobs worker`.

Every page is opened with jobs in every state, the retry / cancel / pause buttons are
clicked and their effect read back from the database, auto-refresh is watched updating
the counts (and stopping when switched off), and hostile strings placed in job types,
payloads, error messages and schedules must neither run nor inject markup. Screenshots
of every page go to test-artifacts/dashboard/.

Dialogs are trapped before any page script runs (a script added through the DevTools
protocol, which the page's CSP does not govern), so an injected `alert(1)` would be
recorded even if it ran during page load.
"""

from __future__ import annotations

import base64
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from tests.helpers import wait_until
from tests.paths import APPS, ROOT
from tests.webserver import Process, free_port, running_server

pytestmark = pytest.mark.slow

ARTIFACTS = ROOT / "test-artifacts" / "dashboard"
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TOKEN = "browser-token"
USER, PASSWORD = "admin", "browser-pw"
XSS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "javascript:alert(1)",
]
CHROME_FLAGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1440,1000",
]
# Runs before every page's own scripts: records dialogs instead of showing them, and
# counts the page's requests for counts.json.
TRAP = """
window.__dialogs = [];
for (const name of ["alert", "confirm", "prompt"]) {
  window[name] = function (message) {
    window.__dialogs.push([name, String(message)]);
    return name === "confirm" ? true : null;
  };
}
"""
# What a page holds that an injection would have added.
INSPECT = """
const attrs = [];
for (const el of document.querySelectorAll("*")) {
  for (const a of el.attributes) {
    if (a.name.startsWith("on")) attrs.push(el.tagName + "." + a.name);
  }
}
const urls = [];
for (const el of document.querySelectorAll("[href],[src],[action],[formaction]")) {
  for (const name of ["href", "src", "action", "formaction"]) {
    const v = el.getAttribute(name);
    if (v !== null) urls.push(v);
  }
}
return {
  scripts: Array.from(document.scripts).map((s) => s.getAttribute("src")),
  images: document.images.length,
  handlers: attrs,
  js_urls: urls.filter((u) => /^\\s*javascript:/i.test(u)),
  dialogs: window.__dialogs || null,
  text: document.body.textContent,
  title: document.title,
};
"""


def chromium_or_skip() -> None:
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        subprocess.run([str(ROOT / "bin" / "ensure-chromium")], check=False, timeout=900)
        missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        message = (
            "\n" + "#" * 78 + "\n# DASHBOARD BROWSER TESTS SKIPPED: " + ", ".join(missing)
            + " missing and could not be installed.\n# Install them with: apt-get update "
            "&& apt-get install -y chromium chromium-driver\n" + "#" * 78
        )  # fmt: skip
        print(message, file=sys.stderr)
        pytest.skip(message)


class Browser:
    """A headless chromium that sends the dashboard's Basic credentials itself."""

    def __init__(self, base: str) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.base = base
        self.profile = tempfile.mkdtemp(prefix="pgjobs-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*CHROME_FLAGS, f"--user-data-dir={self.profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(30)
        credentials = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()
        self.driver.execute_cdp_cmd("Network.enable", {})
        self.driver.execute_cdp_cmd(
            "Network.setExtraHTTPHeaders", {"headers": {"Authorization": f"Basic {credentials}"}}
        )
        self.driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": TRAP})
        self.shots = 0

    def open(self, path: str) -> dict[str, Any]:
        self.driver.get(self.base + path)
        return self.inspect()

    def inspect(self) -> dict[str, Any]:
        from selenium.common.exceptions import NoAlertPresentException

        try:
            alert = self.driver.switch_to.alert
            text = alert.text
            alert.dismiss()
            raise AssertionError(f"a dialog is open on {self.driver.current_url}: {text!r}")
        except NoAlertPresentException:
            pass
        state: dict[str, Any] = self.driver.execute_script(INSPECT)
        return state

    def click(self, action_suffix: str, **fields: str) -> None:
        """Submit the page's form whose action ends with `action_suffix` (and whose
        hidden fields hold `fields`); return once the next page has loaded."""
        from selenium.webdriver.common.by import By

        def matches(form: Any) -> bool:
            if not (form.get_attribute("action") or "").endswith(action_suffix):
                return False
            hidden = {
                i.get_attribute("name"): i.get_attribute("value")
                for i in form.find_elements(By.CSS_SELECTOR, "input[type=hidden]")
            }
            return all(hidden.get(k) == v for k, v in fields.items())

        self.driver.execute_script("window.__before_click = true")
        form = next(
            f for f in self.driver.find_elements(By.CSS_SELECTOR, "form[method=post]") if matches(f)
        )
        form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait_until(self._next_page_loaded, message=f"the page after {action_suffix}")

    def _next_page_loaded(self) -> bool:
        from selenium.common.exceptions import WebDriverException

        try:
            return bool(
                self.driver.execute_script(
                    "return window.__before_click === undefined"
                    " && document.readyState === 'complete'"
                )
            )
        except WebDriverException:  # between two documents
            return False

    def screenshot(self, name: str) -> Path:
        """The whole page, beyond the window (up to 6000 px tall)."""
        self.shots += 1
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        path = ARTIFACTS / f"{self.shots:02d}-{name}.png"
        size = self.driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": min(size["height"], 6000)}
        shot = self.driver.execute_cdp_cmd(
            "Page.captureScreenshot",
            {"format": "png", "captureBeyondViewport": True, "clip": {**clip, "scale": 1}},
        )
        path.write_bytes(base64.b64decode(shot["data"]))
        return path

    def console(self) -> list[dict[str, Any]]:
        entries: list[dict[str, Any]] = self.driver.get_log("browser")
        return entries

    def close(self) -> None:
        self.driver.quit()
        subprocess.run(["rm", "-rf", self.profile], check=False)


@contextmanager
def stack(db_url: str, **env: str) -> Iterator[tuple[str, Browser, httpx.Client]]:
    """`pgjobs server` + `pgjobs worker default` + a browser + an API client."""
    chromium_or_skip()
    server_env = {
        "JOBS_API_TOKEN": TOKEN,
        "JOBS_DASHBOARD_USER": USER,
        "JOBS_DASHBOARD_PASSWORD": PASSWORD,
        "JOBS_DASHBOARD_REFRESH": "1000",
        "JOBS_DASHBOARD_SECRET": "browser-secret",
        **env,
    }
    worker = Process(
        ["worker", "default", "xss", "--app", "dashboard_app:app", "--concurrency", "4"],
        {
            "DATABASE_URL": db_url,
            "PYTHONPATH": APPS,
            "JOBS_POLL_INTERVAL": "200",
            "JOBS_HEARTBEAT_INTERVAL": "500",
            "JOBS_SHUTDOWN_GRACE": "200",
        },
    )
    try:
        with running_server(db_url, port=free_port(), **server_env) as base:
            api = httpx.Client(
                base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
            )
            browser = Browser(base)
            try:
                yield base, browser, api
            finally:
                browser.close()
                api.close()
    finally:
        code = worker.stop()
        assert code in (0, -2), f"worker exit {code}"


def create(api: httpx.Client, type: str, queue: str = "default", **fields: Any) -> str:
    response = api.post("/api/jobs", json={"type": type, "queue": queue, **fields})
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def insert_typed(db_url: str, type: str, queue: str, max_attempts: int = 3) -> str:
    """A pending job of any type, written by SQL."""
    (row,) = rows(
        db_url,
        "INSERT INTO jobs (type, queue, payload, max_attempts) VALUES (%s, %s, %s, %s)"
        " RETURNING id",
        type,
        queue,
        Jsonb({"note": type}),
        max_attempts,
    )
    return str(row["id"])


def rows(db_url: str, sql: str, *params: Any) -> list[dict[str, Any]]:
    with psycopg.connect(db_url, autocommit=True, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


def status(db_url: str, job_id: str) -> str | None:
    found = rows(db_url, "SELECT status FROM jobs WHERE id = %s", job_id)
    return str(found[0]["status"]) if found else None


def counts(db_url: str) -> dict[str, int]:
    found = rows(db_url, "SELECT status, count(*) AS n FROM jobs GROUP BY status")
    return {r["status"]: int(r["n"]) for r in found}


def assert_clean(state: dict[str, Any], where: str) -> None:
    """Nothing an injection would leave behind: only our script, no images, no event
    handler attributes, no javascript: URLs, no dialog."""
    assert state["scripts"] == ["/dashboard/static/dashboard.js?v=0.1.0"], where
    assert state["images"] == 0, where
    assert state["handlers"] == [], where
    assert state["js_urls"] == [], where
    assert state["dialogs"] == [], where


def assert_no_console_problems(
    browser: Browser, expected_404: str = "", status: str = "404"
) -> None:
    """No CSP violation (what a blocked injection would log) and no failed load, but
    the 404 (or other `status`) a test asked for."""
    problems = [
        e
        for e in browser.console()
        if (e["level"] == "SEVERE" or "Security Policy" in e["message"])
        and not (expected_404 and expected_404 in e["message"] and status in e["message"])
    ]
    assert problems == [], problems


# ---------------------------------------------------------------- the tour


def test_every_page_and_the_main_actions_in_a_browser(db_url: str) -> None:
    with stack(db_url) as (_, browser, api):
        done = [create(api, "ok", payload={"n": i, "password": "hunter2"}) for i in range(5)]
        failed = [
            create(
                api,
                "fail",
                payload={"message": f"SMTPError: 451 try later (#{i})"},
                options={"attempts": 1},
            )
            for i in range(2)
        ]
        running = create(api, "slow")
        delayed = create(api, "ok", options={"delay": 3_600_000})
        to_cancel = create(api, "ok", options={"delay": 3_600_000})
        waiting = [create(api, "ok", "idle", payload={"i": i}) for i in range(3)]
        blocked = create(api, "ok", "idle", options={"dependsOn": [waiting[0]]})
        cancelled = create(api, "ok", "idle")
        assert api.post(f"/api/jobs/{cancelled}/cancel").status_code == 200
        schedule = {"name": "nightly-report", "type": "ok", "cron": "30 2 * * *"}
        assert api.post("/api/schedules", json=schedule).status_code == 201
        wait_until(
            lambda: (
                counts(db_url).get("completed") == 5
                and counts(db_url).get("failed") == 2
                and status(db_url, running) == "active"
            ),
            timeout=30,
            message="the worker to finish, fail and start the jobs",
        )
        assert {status(db_url, i) for i in done} == {"completed"}
        assert status(db_url, blocked) == "blocked" and status(db_url, delayed) == "delayed"

        # Every page, with everything in it shown and nothing broken.
        page = browser.open("/dashboard")
        assert_clean(page, "overview")
        for text in ("default", "idle", "Throughput", "Failure rate", "Live workers"):
            assert text in page["text"], text
        assert "5 completed · 2 failed" in page["text"]
        # The charts have axes with units, and a tooltip (an SVG <title>) on every bar.
        for text in ("jobs/min", "jobs per 30 min", "% failed", "time (UTC)"):
            assert text in page["text"], text
        titles = browser.driver.execute_script(
            "return Array.from(document.querySelectorAll('svg.chart g.bar > title'))"
            ".map((t) => t.textContent)"
        )
        assert any(t.endswith("completed, 0 failed") for t in titles), titles[:5]
        browser.screenshot("overview")
        for path, name, expected in [
            ("/dashboard/queues/default", "queue", ["active", "delayed", "SMTPError: 451"]),
            ("/dashboard/queues/default?status=failed", "queue-failed", ["SMTPError: 451"]),
            ("/dashboard/queues/idle", "queue-idle", ["blocked", "cancelled", "waiting"]),
            (f"/dashboard/jobs/{failed[0]}", "job-failed", ["RuntimeError", "pgjobs frames"]),
            (f"/dashboard/jobs/{done[0]}", "job-completed", ["completed", '"ok": true']),
            (f"/dashboard/jobs/{running}", "job-active", ["working", "active"]),
            (f"/dashboard/jobs/{blocked}", "job-blocked", ["Waits for", "blocked"]),
            ("/dashboard/failures", "failures", ["SMTPError: 451 try later", "fail"]),
            (
                "/dashboard/schedules",
                "schedules",
                ["nightly-report", "every day at 02:30", "Run now"],
            ),
            ("/dashboard/workers", "workers", ["alive", "default, xss"]),
        ]:
            state = browser.open(path)
            assert_clean(state, path)
            for text in expected:
                assert text in state["text"], (path, text)
            assert "hunter2" not in state["text"], path
            browser.screenshot(name)

        # Retry a failed job from its page; first unfold pgjobs' frames of its trace.
        browser.open(f"/dashboard/jobs/{failed[0]}")
        fold = browser.driver.find_element("css selector", "details.frames")
        assert "dashboard_app.py" in browser.driver.find_element("css selector", "div.stack").text
        fold.find_element("css selector", "summary").click()
        assert fold.get_attribute("open") is not None and "/pgjobs/" in fold.text
        browser.screenshot("job-failed-frames-open")
        browser.click(f"/jobs/{failed[0]}/retry")
        state = browser.inspect()
        assert "Retried 1 job(s)." in state["text"]
        wait_until(
            lambda: (
                rows(db_url, "SELECT max_attempts FROM jobs WHERE id = %s", failed[0])[0][
                    "max_attempts"
                ]
                == 2
            ),
            message="the retry to grant a new attempt",
        )
        browser.screenshot("job-retried")

        # Cancel a delayed job.
        browser.open(f"/dashboard/jobs/{to_cancel}")
        browser.click(f"/jobs/{to_cancel}/cancel")
        assert "Cancelled the job" in browser.inspect()["text"]
        assert status(db_url, to_cancel) == "cancelled"

        # Pause the queue, then resume it.
        browser.open("/dashboard/queues/default")
        browser.click("/queues/default/pause")
        state = browser.inspect()
        assert "Paused the queue" in state["text"] and "Resume queue" in state["text"]
        paused = rows(db_url, "SELECT paused FROM job_queues WHERE name = 'default'")
        assert paused[0]["paused"] is True
        browser.screenshot("queue-paused")
        browser.click("/queues/default/resume")
        assert "Resumed the queue." in browser.inspect()["text"]
        paused = rows(db_url, "SELECT paused FROM job_queues WHERE name = 'default'")
        assert paused[0]["paused"] is False

        # Retry a whole failure group (the confirm dialog is answered yes by the trap).
        browser.open("/dashboard/failures")
        browser.click("/failures/retry")
        assert "Retried" in browser.inspect()["text"]

        # Everything above is in the audit trail, by this user.
        trail = rows(db_url, "SELECT actor, action, target FROM job_audit ORDER BY id")
        mine = [(r["action"], r["target"]) for r in trail if r["actor"] == f"dashboard:{USER}"]
        assert mine[:4] == [
            ("retry", failed[0]),
            ("cancel", to_cancel),
            ("pause", "default"),
            ("resume", "default"),
        ]
        assert mine[4][0] == "retry"
        state = browser.open("/dashboard/audit")
        assert_clean(state, "audit")
        assert f"dashboard:{USER}" in state["text"]
        browser.screenshot("audit")

        # Auto-refresh: counts change in place, without a reload; off means off.
        browser.open("/dashboard")
        browser.driver.execute_script("window.__marker = 'same page'")
        box = browser.driver.find_element("id", "auto-refresh")
        assert box.is_displayed() and box.is_selected()

        def idle_waiting() -> str:
            text: str = browser.driver.execute_script(
                "return document.querySelector("
                '\'[data-count-queue="idle"][data-count-field="waiting"]\').textContent'
            )
            return text

        before = idle_waiting()
        create(api, "ok", "idle")
        wait_until(lambda: idle_waiting() != before, timeout=10, message="the count to refresh")
        assert int(idle_waiting()) == int(before) + 1
        assert browser.driver.execute_script("return window.__marker") == "same page"
        box.click()
        assert not box.is_selected()
        polls = (
            "return performance.getEntriesByType('resource')"
            ".filter((e) => e.name.includes('/counts.json')).length"
        )
        seen = browser.driver.execute_script(polls)
        create(api, "ok", "idle")
        # Switched off: three refresh intervals pass without a request (a bounded wait
        # for something that must not happen).
        time.sleep(3.5)
        assert browser.driver.execute_script(polls) == seen
        assert idle_waiting() == str(int(before) + 1)
        browser.open("/dashboard")
        box = browser.driver.find_element("id", "auto-refresh")
        assert not box.is_selected()  # the choice is remembered
        box.click()
        assert browser.driver.find_element("id", "auto-refresh").is_selected()
        assert_no_console_problems(browser)


# ---------------------------------------------------------------- schedules


def fill_in(browser: Browser, **fields: str) -> None:
    """Type into the form's fields (by name), replacing what they held."""
    from selenium.webdriver.common.by import By

    for name, value in fields.items():
        box = browser.driver.find_element(By.NAME, name)
        box.clear()
        box.send_keys(value)


def test_schedules_run_now_create_and_edit_in_a_browser(db_url: str) -> None:
    from selenium.webdriver.common.by import By

    with stack(db_url) as (_, browser, api):
        schedule = {"name": "nightly-report", "type": "ok", "cron": "30 2 * * *"}
        assert api.post("/api/schedules", json=schedule).status_code == 201
        next_run = rows(db_url, "SELECT next_run_at FROM job_schedules")[0]["next_run_at"]

        # Run now: the worker runs the job; the schedule's next slot does not move.
        browser.open("/dashboard/schedules")
        browser.click("/schedules/nightly-report/run")
        state = browser.inspect()
        assert_clean(state, "after run now")
        assert "Enqueued the schedule's job; its next run is unchanged." in state["text"]
        wait_until(
            lambda: counts(db_url).get("completed") == 1,
            timeout=30,
            message="the worker to run the schedule's job",
        )
        (job,) = rows(db_url, "SELECT type, metadata FROM jobs")
        assert job["type"] == "ok" and job["metadata"]["schedule"] == "nightly-report"
        assert rows(db_url, "SELECT next_run_at FROM job_schedules")[0]["next_run_at"] == next_run
        browser.screenshot("schedule-run-now")

        # Create: a bad cron comes back with the message and what was typed.
        browser.driver.find_element(By.LINK_TEXT, "New schedule").click()
        wait_until(lambda: browser.driver.find_elements(By.ID, "f-name"), message="the create form")
        fill_in(
            browser,
            name="weekday-digest",
            type="ok",
            cron="0 25 * * 1-5",
            timezone="Europe/Berlin",
            payload='{"list": "ops", "note": "<script>alert(1)</script>"}',
            description="Weekday digest",
        )
        browser.screenshot("schedule-new-form")
        browser.click("/dashboard/schedules")
        state = browser.inspect()
        assert_clean(state, "the form with an error")
        assert "25" in browser.driver.find_element(By.ID, "form-error").text
        assert browser.driver.find_element(By.ID, "f-cron").get_attribute("value") == "0 25 * * 1-5"
        assert browser.driver.find_element(By.ID, "f-payload").get_attribute("value") == (
            '{"list": "ops", "note": "<script>alert(1)</script>"}'
        )
        assert rows(db_url, "SELECT count(*) AS n FROM job_schedules")[0]["n"] == 1
        browser.screenshot("schedule-form-error")
        fill_in(browser, cron="0 7 * * 1-5")
        browser.click("/dashboard/schedules")
        state = browser.inspect()
        assert "Created the schedule." in state["text"] and "weekday-digest" in state["text"]
        (created,) = rows(db_url, "SELECT * FROM job_schedules WHERE name = 'weekday-digest'")
        assert (created["cron_expression"], created["timezone"]) == ("0 7 * * 1-5", "Europe/Berlin")
        assert created["payload"] == {"list": "ops", "note": "<script>alert(1)</script>"}
        assert created["enabled"] is True

        # Edit: change the cron and the queue, switch it off.
        browser.driver.find_element(
            By.CSS_SELECTOR, 'a[href="/dashboard/schedules/weekday-digest/edit"]'
        ).click()
        wait_until(lambda: browser.driver.find_elements(By.ID, "f-cron"), message="the edit form")
        assert browser.driver.find_element(By.ID, "f-cron").get_attribute("value") == "0 7 * * 1-5"
        fill_in(browser, cron="30 6 * * 1-5", queue="idle")
        browser.driver.find_element(By.ID, "f-enabled").click()
        browser.screenshot("schedule-edit-form")
        browser.click("/dashboard/schedules/weekday-digest/edit")
        state = browser.inspect()
        assert_clean(state, "after the edit")
        assert "Saved the schedule." in state["text"]
        (edited,) = rows(db_url, "SELECT * FROM job_schedules WHERE name = 'weekday-digest'")
        assert (edited["cron_expression"], edited["queue"]) == ("30 6 * * 1-5", "idle")
        assert edited["enabled"] is False and edited["next_run_at"] is None
        browser.screenshot("schedules-after-edit")

        trail = rows(db_url, "SELECT actor, action, target FROM job_audit ORDER BY id")
        mine = [(r["action"], r["target"]) for r in trail if r["actor"] == f"dashboard:{USER}"]
        assert mine == [
            ("schedule.run", "nightly-report"),
            ("schedule.create", "weekday-digest"),
            ("schedule.update", "weekday-digest"),
        ]
        # The form sent back with its error is a 422 page, logged as a failed load.
        assert_no_console_problems(browser, "/dashboard/schedules", status="422")


# ---------------------------------------------------------------- hostile input


def test_hostile_strings_never_run_in_the_browser(db_url: str) -> None:
    with stack(db_url) as (_, browser, api):
        # Hostile job types go straight into the table, as SQL may write them (what the
        # API accepts as a type is the API's business; the dashboard shows any row).
        hostile_types = [insert_typed(db_url, attack, "idle") for attack in XSS]
        failing = [
            create(
                api,
                "fail",
                payload={"message": attack, "note": attack, attack: attack},
                options={"attempts": 1},
            )
            for attack in XSS
        ]
        # The worker fails jobs of types it has no handler for, quoting the type.
        unknown = [insert_typed(db_url, attack, "xss", max_attempts=1) for attack in XSS]
        # Queue names are validated: none of these is a queue name.
        for attack in XSS:
            refused = api.post("/api/jobs", json={"type": "ok", "queue": attack})
            assert refused.status_code == 422 and "invalid queue name" in refused.text
        # Schedule names are validated too; type and description are free text.
        for attack in XSS:
            refused = api.post(
                "/api/schedules", json={"name": attack, "type": "ok", "cron": "0 * * * *"}
            )
            assert refused.status_code == 422, refused.text
        created = api.post(
            "/api/schedules",
            json={
                "name": "javascript:alert",
                "type": "ok",
                "cron": "0 * * * *",
                "description": XSS[1],
                "payload": {"x": XSS[2]},
            },
        )
        assert created.status_code == 201, created.text
        rows(db_url, "UPDATE job_schedules SET type = %s RETURNING id", XSS[0])
        wait_until(
            lambda: all(status(db_url, i) == "failed" for i in failing + unknown),
            timeout=30,
            message="the hostile jobs to fail",
        )

        pages = [
            ("/dashboard", "xss-overview", []),
            ("/dashboard/queues/idle", "xss-queue-idle", XSS),
            ("/dashboard/queues/default?status=failed", "xss-queue-failed", XSS),
            ("/dashboard/queues/xss", "xss-queue-unknown-types", XSS),
            ("/dashboard/failures", "xss-failures", XSS),
            ("/dashboard/schedules", "xss-schedules", ["javascript:alert", XSS[0], XSS[1]]),
            *((f"/dashboard/jobs/{i}", f"xss-job-{n}", [XSS[n]]) for n, i in enumerate(failing)),
            *((f"/dashboard/jobs/{i}", f"xss-type-{n}", [XSS[n]]) for n, i in enumerate(unknown)),
            (f"/dashboard/jobs/{hostile_types[0]}", "xss-type-pending", [XSS[0]]),
            ("/dashboard/queues/idle?type=%3Cscript%3Ealert(1)%3C%2Fscript%3E", "", [XSS[0]]),
            ("/dashboard/queues/%3Cscript%3Ealert(1)%3C%2Fscript%3E", "xss-bad-queue", [XSS[0]]),
        ]
        for path, shot, visible in pages:
            state = browser.open(path)
            assert_clean(state, path)
            for attack in visible:
                # Shown as text, exactly as stored (escaped in the HTML).
                assert attack in state["text"], (path, attack)
            if shot:
                browser.screenshot(shot)
        # Retrying a group whose error is hostile works and stays clean too.
        browser.open("/dashboard/failures")
        browser.click("/failures/retry", type="fail", error_line=f"RuntimeError: {XSS[1]}")
        state = browser.inspect()
        assert_clean(state, "after retrying a hostile group")
        assert "Retried 1 job(s)." in state["text"]
        assert (
            status(db_url, failing[1]) != "failed"
            or rows(db_url, "SELECT max_attempts FROM jobs WHERE id = %s", failing[1])[0][
                "max_attempts"
            ]
            == 2
        )
        state = browser.open("/dashboard/audit")
        assert_clean(state, "audit")
        assert_no_console_problems(browser, "/dashboard/queues/%3Cscript%3E")


def insert_failed(db_url: str, queue: str, error: str) -> str:
    """A failed job of a queue no worker serves (a retry leaves it waiting)."""
    (row,) = rows(
        db_url,
        "INSERT INTO jobs (type, queue, status, payload, attempts, max_attempts, last_error,"
        " started_at, completed_at) VALUES ('bulk-task-with-a-rather-long-type-name', %s,"
        " 'failed', %s, 3, 3, %s, now(), now()) RETURNING id",
        queue,
        Jsonb({"user_id": 42}),
        error,
    )
    return str(row["id"])


def test_bulk_retry_and_search_in_a_browser(db_url: str) -> None:
    from selenium.webdriver.common.by import By

    jobs = [insert_failed(db_url, "bulk", f"RuntimeError: bulk boom {n}") for n in range(3)]
    with stack(db_url) as (_, browser, _api):
        state = browser.open("/dashboard/queues/bulk?status=failed")
        assert_clean(state, "queue with checkboxes")
        # "Check all" is shown by the script and checks every row; unchecking it clears.
        check_all = browser.driver.find_element(By.CSS_SELECTOR, "[data-check-all]")
        assert check_all.is_displayed()
        check_all.click()
        boxes = browser.driver.find_elements(By.CSS_SELECTOR, "input[type=checkbox][name=id]")
        assert len(boxes) == 3 and all(b.is_selected() for b in boxes)
        check_all.click()
        assert not any(b.is_selected() for b in boxes)
        # A row is one line: the long type does not wrap.
        cell = browser.driver.find_element(By.CSS_SELECTOR, "td.type")
        assert cell.value_of_css_property("white-space") == "nowrap"

        # Check two rows and retry them.
        for job_id in jobs[:2]:
            browser.driver.find_element(
                By.CSS_SELECTOR, f"input[type=checkbox][value='{job_id}']"
            ).click()
        assert browser.driver.find_element(By.CSS_SELECTOR, "[data-checked-count]").text == "2"
        browser.screenshot("bulk-checked")
        browser.driver.execute_script("window.__before_click = true")
        browser.driver.find_element(By.CSS_SELECTOR, "button[value=retry]").click()
        wait_until(browser._next_page_loaded, message="the page after the bulk retry")
        state = browser.inspect()
        assert "Retried 2 job(s)." in state["text"], state["text"][:500]
        assert [status(db_url, j) for j in jobs] == ["pending", "pending", "failed"]
        browser.screenshot("bulk-retried")
        trail = rows(
            db_url, "SELECT action, detail FROM job_audit WHERE actor = %s", f"dashboard:{USER}"
        )
        assert [(r["action"], sorted(r["detail"]["jobs"])) for r in trail] == [
            ("retry", sorted(jobs[:2]))
        ]

        # The search box in the header finds the one still failed by its error.
        box = browser.driver.find_element(By.CSS_SELECTOR, "form.search input[name=q]")
        box.send_keys('error:"bulk boom 2" status:failed\n')
        wait_until(
            lambda: "/dashboard/search" in browser.driver.current_url,
            message="the search page",
        )
        wait_until(browser._next_page_loaded, message="the search page to load")
        state = browser.inspect()
        assert_clean(state, "search")
        found = browser.driver.find_elements(By.CSS_SELECTOR, "input[type=checkbox][name=id]")
        assert [f.get_attribute("value") for f in found] == [jobs[2]]
        browser.screenshot("search")
        assert_no_console_problems(browser)
