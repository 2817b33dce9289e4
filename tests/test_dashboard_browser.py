"""The dashboard in a real headless Chromium (Debian's, driven by Playwright): its numbers are
the API's, it updates itself, its actions take effect, nothing logs an error, and a screenshot
of every view is kept (the folder is printed; ``tests/artifacts/`` is not committed)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from imgsrv.app import create_app
from tests.conftest import LiveServer
from tests.job_fixtures import (
    ADMIN,
    ADMIN_KEY,
    AUTH_A,
    AUTH_B,
    PHOTO,
    TINY,
    job_settings,
    submit,
    wait_status,
)
from tests.origin import shared_origin
from tests.servers import RedisProcess

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "dashboard"

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists(), reason="chromium is not installed (/usr/bin/chromium)"
)
sync_api = pytest.importorskip("playwright.sync_api")


class Site:
    """The live server, its API, and what the test set up in it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.jobs: dict[str, str] = {}

    def api(self, method: str, path: str, headers: dict[str, str] = ADMIN, **kw: Any) -> Any:
        response = httpx.request(method, self.url + path, headers=headers, timeout=10, **kw)
        assert response.status_code < 400, response.text
        return response.json()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    redis = RedisProcess(tmp_path_factory.mktemp("dashboard-browser") / "redis").start()
    origin = shared_origin()
    try:
        # A worker first: one job that succeeds (its variants become thumbnails), one that fails.
        with TestClient(create_app(job_settings(redis.url, job_workers=2))) as worker:
            done = submit(worker, {
                "source": origin.url(PHOTO),
                "variants": [{"w": 160, "f": "webp"}, {"rs": "cover:120:120", "f": "png"}],
            })  # fmt: skip
            failed = submit(worker, {"source": origin.url("status/404"), "variants": [{"w": 8}]})
            wait_status(worker, done)
            wait_status(worker, failed)
        settings = job_settings(redis.url, dashboard_refresh=1.0, access_log=False)
        with LiveServer(settings) as server:
            site = Site(server.url)
            site.jobs = {"done": done, "failed": failed}
            tiny = {"source": origin.url(TINY), "variants": [{"w": 12}]}
            for name, auth, priority in (
                ("a1", AUTH_A, "normal"), ("a2", AUTH_A, "low"), ("b1", AUTH_B, "high"),
            ):  # fmt: skip
                job = site.api("POST", "/v1/jobs", auth, json={**tiny, "priority": priority})
                site.jobs[name] = job["id"]
            site.api("POST", "/v1/schedules", AUTH_A, json={"cron": "0 4 * * *", "job": tiny})
            yield site
    finally:
        redis.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        yield launched
        launched.close()


@pytest.fixture(scope="module")
def shots() -> Path:
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    print(f"\ndashboard screenshots: {ARTIFACTS}")
    return ARTIFACTS


class Page:
    """A signed-in page that records console errors and failed requests."""

    def __init__(self, browser: Any, site: Site, **context: Any) -> None:
        self.context = browser.new_context(**context)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(m.text))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("requestfailed", lambda r: self.errors.append(f"failed {r.url}"))
        self.site = site

    def field(self, selector: str) -> str:
        return str(self.page.locator(selector).inner_text()).strip()

    def wait_field(self, selector: str, value: str, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.field(selector) != value:
            assert time.monotonic() < deadline, f"{selector} stayed {self.field(selector)!r}"
            self.page.wait_for_timeout(100)


@pytest.fixture(scope="module")
def page(browser: Any, site: Site) -> Iterator[Page]:
    signed = Page(browser, site)
    signed.page.goto(site.url + "/dashboard/login")
    signed.page.fill("input[name=key]", ADMIN_KEY)
    signed.page.click("button[type=submit]")
    signed.page.wait_for_url(site.url + "/dashboard")
    yield signed
    assert signed.errors == [], signed.errors
    signed.context.close()


def test_the_session_cookie_is_http_only_and_strict(page: Page) -> None:
    (cookie,) = page.context.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/dashboard"
    assert page.page.evaluate("document.cookie") == ""  # scripts cannot read it


def test_the_queues_view_shows_the_apis_numbers_and_updates_itself(
    page: Page, site: Site, shots: Path
) -> None:
    page.page.goto(site.url + "/dashboard")
    queues = site.api("GET", "/v1/queues")
    for entry in queues["priorities"]:
        priority = entry["priority"]
        assert page.field(f"td[data-field=depth][data-priority={priority}]") == str(entry["depth"])
        for row in entry["tenants"]:
            selector = (
                f"td[data-field=tenant_depth][data-priority={priority}]"
                f"[data-tenant={row['tenant']}]"
            )
            assert page.field(selector) == str(row["depth"])
    assert page.field("b[data-field=running]") == str(queues["running"])
    page.page.screenshot(path=str(shots / "queues.png"), full_page=True)
    # A job submitted now appears without a reload (the marker would not survive one).
    page.page.evaluate("window.marker = 1")
    before = int(page.field("td[data-field=depth][data-priority=high]"))
    extra = site.api(
        "POST", "/v1/jobs", AUTH_B,
        json={"source": shared_origin().url(TINY), "variants": [{"w": 13}], "priority": "high"},
    )  # fmt: skip
    page.wait_field("td[data-field=depth][data-priority=high]", str(before + 1))
    assert page.page.evaluate("window.marker") == 1
    site.api("DELETE", f"/v1/jobs/{extra['id']}")


def test_pause_and_resume_from_the_page_take_effect(page: Page, site: Site) -> None:
    page.page.goto(site.url + "/dashboard")
    page.page.click("tr[data-priority=low] button")
    page.wait_field("td[data-field=paused][data-priority=low]", "paused")
    assert site.api("GET", "/v1/queues")["priorities"][2]["paused"] is True
    page.page.click("tr[data-priority=low] button")
    page.wait_field("td[data-field=paused][data-priority=low]", "active")
    assert site.api("GET", "/v1/queues")["priorities"][2]["paused"] is False


def test_the_jobs_view_lists_newest_first_and_filters(page: Page, site: Site, shots: Path) -> None:
    page.page.goto(site.url + "/dashboard/jobs")
    rows = page.page.locator("tr[data-job]")
    listed = [rows.nth(i).get_attribute("data-job") for i in range(rows.count())]
    assert listed == [job["id"] for job in site.api("GET", "/v1/jobs?limit=50")["jobs"]]
    page.page.screenshot(path=str(shots / "jobs.png"), full_page=True)
    page.page.select_option("select[name=status]", "queued")
    page.page.select_option("select[name=tenant]", "tenant-a")
    page.page.click("form.filters button")
    page.page.wait_for_url("**/dashboard/jobs?status=queued&tenant=tenant-a&priority=")
    rows = page.page.locator("tr[data-job]")
    filtered = [rows.nth(i).get_attribute("data-job") for i in range(rows.count())]
    expected = site.api("GET", "/v1/jobs?status=queued&tenant=tenant-a&limit=50")["jobs"]
    assert filtered == [job["id"] for job in expected] and len(filtered) == 2


def test_a_jobs_page_shows_its_variants_as_thumbnails(page: Page, site: Site, shots: Path) -> None:
    job_id = site.jobs["done"]
    page.page.goto(site.url + f"/dashboard/jobs/{job_id}")
    job = site.api("GET", f"/v1/jobs/{job_id}")
    images = page.page.locator(".thumbs img")
    assert images.count() == 2
    for index, variant in enumerate(job["variants"]):
        image = images.nth(index)
        assert image.get_attribute("src") == variant["result"]["url"]
        image.scroll_into_view_if_needed()
        page.page.wait_for_function(
            "(img) => img.complete && img.naturalWidth > 0", arg=image.element_handle()
        )
        width = image.evaluate("(img) => img.naturalWidth")
        assert width == variant["result"]["width"]
    assert page.field("dd[data-field=attempts]") == str(job["attempts"])
    events = page.page.locator("td[data-field=event]")
    assert [events.nth(i).inner_text() for i in range(events.count())] == [
        e["event"] for e in job["timeline"]
    ]
    page.page.screenshot(path=str(shots / "job.png"), full_page=True)


def test_cancel_retry_and_priority_from_the_page_take_effect(page: Page, site: Site) -> None:
    queued = site.jobs["a1"]
    page.page.goto(site.url + f"/dashboard/jobs/{queued}")
    page.page.select_option("select[name=priority]", "high")
    page.page.click("form[data-action='Change priority'] button")
    page.wait_field("dd[data-field=priority]", "high")
    assert site.api("GET", f"/v1/jobs/{queued}")["priority"] == "high"
    page.page.click("form[data-action=Cancel] button")
    page.wait_field("dd[data-field=status]", "cancelled")
    assert site.api("GET", f"/v1/jobs/{queued}")["status"] == "cancelled"
    failed = site.jobs["failed"]
    page.page.goto(site.url + f"/dashboard/jobs/{failed}")
    assert page.field("pre[data-field=error]").count("source-not-found") == 1
    page.page.click("form[data-action=Retry] button")
    page.wait_field("dd[data-field=status]", "queued")
    retried = site.api("GET", f"/v1/jobs/{failed}")
    assert retried["status"] == "queued" and retried["attempts"] == 0


def test_the_workers_schedules_and_traffic_views_match_the_api(
    page: Page, site: Site, shots: Path
) -> None:
    page.page.goto(site.url + "/dashboard/workers")
    workers = site.api("GET", "/v1/workers")
    rows = page.page.locator("tr[data-worker]")
    assert sorted(rows.nth(i).get_attribute("data-worker") for i in range(rows.count())) == sorted(
        w["id"] for w in workers["workers"]
    )
    assert page.field("b[data-field=online]") == str(workers["online"])
    page.page.screenshot(path=str(shots / "workers.png"), full_page=True)

    page.page.goto(site.url + "/dashboard/schedules")
    (schedule,) = site.api("GET", "/v1/schedules")["schedules"]
    row = f"tr[data-schedule='{schedule['id']}']"
    assert page.field(f"{row} td[data-field=next_run]") == schedule["next_run"]
    assert page.field(f"{row} td[data-field=cron]") == schedule["cron"]
    page.page.screenshot(path=str(shots / "schedules.png"), full_page=True)

    page.page.goto(site.url + "/dashboard/traffic")
    stats = site.api("GET", "/v1/stats")
    for name in ("l1_hit_ratio", "l2_hit_ratio", "l1_bytes"):
        shown = page.field(f"td[data-field={name}]")
        value = stats[name]
        assert shown == ("—" if value is None else f"{value:.4g}"), name
    page.page.screenshot(path=str(shots / "traffic.png"), full_page=True)


def test_with_javascript_off_the_pages_are_readable_with_basic_authentication(
    browser: Any, site: Site, shots: Path
) -> None:
    plain = Page(
        browser, site, java_script_enabled=False,
        http_credentials={"username": "ops", "password": ADMIN_KEY},
    )  # fmt: skip
    try:
        plain.page.goto(site.url + "/dashboard")
        queues = site.api("GET", "/v1/queues")
        for entry in queues["priorities"]:
            cell = f"td[data-field=depth][data-priority={entry['priority']}]"
            assert plain.field(cell) == str(entry["depth"])
        plain.page.goto(site.url + f"/dashboard/jobs/{site.jobs['done']}")
        assert plain.field("dd[data-field=status]") == "succeeded"
        plain.page.screenshot(path=str(shots / "job-no-javascript.png"), full_page=True)
        assert plain.errors == []
    finally:
        plain.context.close()
