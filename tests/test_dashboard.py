"""The dashboard over HTTP: who may look, who may act (sessions, CSRF), and what it shows."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from imgsrv.app import create_app
from imgsrv.dashboard.session import COOKIE, csrf_token, new_session
from tests.job_fixtures import ADMIN, ADMIN_KEY, AUTH_A, TINY, get_job, job_settings, submit
from tests.origin import shared_origin
from tests.servers import RedisProcess

BASIC = ("anyone", ADMIN_KEY)


@pytest.fixture(scope="module")
def app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    redis = RedisProcess(tmp_path_factory.mktemp("dashboard") / "redis").start()
    try:
        with TestClient(create_app(job_settings(redis.url))) as client:
            yield client
    finally:
        redis.stop()


def queued_job(app: TestClient) -> str:
    return submit(app, {"source": shared_origin().url(TINY), "variants": [{"w": 10}]})


def page_token(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None
    return found.group(1)


def signed_in(app: TestClient) -> tuple[dict[str, str], str]:
    """The Cookie header of a new session, and the CSRF token its pages carry."""
    response = app.post("/dashboard/login", data={"key": ADMIN_KEY}, follow_redirects=False)
    app.cookies.clear()  # sent explicitly, so that other requests have no session
    assert response.status_code == 303 and response.headers["location"] == "/dashboard"
    value = response.headers["set-cookie"].split(";")[0]
    session = {"Cookie": value}
    return session, page_token(app.get("/dashboard", headers=session).text)


def test_without_credentials_the_dashboard_asks_for_them(app: TestClient) -> None:
    for path in ("/dashboard", "/dashboard/jobs", "/dashboard/workers"):
        response = app.get(path)
        assert response.status_code == 401
        assert response.headers["www-authenticate"].startswith('Basic realm="imgsrv dashboard"')
        assert 'action="/dashboard/login"' in response.text  # the login form as the body
    assert app.get("/dashboard", auth=("anyone", "wrong")).status_code == 401
    assert app.get("/dashboard", headers=ADMIN).status_code == 401  # bearer is for the API
    assert app.get("/dashboard", headers={"Cookie": f"{COOKIE}=1.2.3"}).status_code == 401


def test_basic_authentication_with_any_user_and_the_admin_key(app: TestClient) -> None:
    response = app.get("/dashboard", auth=BASIC)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/html")
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "script-src 'self'" in csp
    assert response.headers["x-frame-options"] == "DENY"
    assert '<script src="/dashboard/static/dashboard.js"' in response.text
    assert "http://" not in response.text and "https://" not in response.text  # no CDN
    fragment = app.get("/dashboard", auth=BASIC, headers={"X-Dashboard-Fragment": "1"})
    assert fragment.text.startswith('<main id="view">') and "<html" not in fragment.text


def test_the_login_form_sets_a_strict_http_only_session_cookie(app: TestClient) -> None:
    wrong = app.post("/dashboard/login", data={"key": "guess"}, follow_redirects=False)
    assert wrong.status_code == 403 and "set-cookie" not in wrong.headers
    right = app.post("/dashboard/login", data={"key": ADMIN_KEY}, follow_redirects=False)
    app.cookies.clear()
    cookie = right.headers["set-cookie"]
    assert cookie.startswith(f"{COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/dashboard" in cookie
    session = {"Cookie": cookie.split(";")[0]}
    assert app.get("/dashboard", headers=session).status_code == 200
    logout = app.post(
        "/dashboard/logout", data={"csrf": page_token(app.get("/dashboard", headers=session).text)},
        headers=session, follow_redirects=False,
    )  # fmt: skip
    assert logout.status_code == 303 and f'{COOKIE}=""' in logout.headers["set-cookie"]
    app.cookies.clear()


def test_actions_need_a_session_and_its_csrf_token_and_change_nothing_otherwise(
    app: TestClient,
) -> None:
    job_id = queued_job(app)
    session, token = signed_in(app)
    other_session = new_session(ADMIN_KEY)
    other_token = csrf_token(ADMIN_KEY, other_session.split(".")[1])
    stale = csrf_token(ADMIN_KEY, "basic", now=time.time() - 13 * 3600)
    cancel = f"/dashboard/jobs/{job_id}/cancel"
    attempts = [
        (app.post(cancel, data={"csrf": token}), "no session"),
        (app.post(cancel, data={}, headers=session), "no token"),
        (app.post(cancel, data={"csrf": "1.2"}, headers=session), "made-up token"),
        (app.post(cancel, data={"csrf": other_token}, headers=session), "another session's token"),
        (app.post(cancel, data={"csrf": stale}, auth=BASIC), "stale token"),
        (app.post(cancel, data={"csrf": token}, auth=BASIC), "the cookie session's token"),
        (
            app.post(
                cancel, data={"csrf": token}, headers={**session, "Origin": "https://evil.example"}
            ),
            "another origin",
        ),
        (app.post("/dashboard/queues/high/pause", data={"csrf": token}), "no session"),
    ]
    for response, what in attempts:
        assert response.status_code == 403, what
        assert response.headers["content-type"] == "application/problem+json", what
    assert get_job(app, job_id)["status"] == "queued"
    assert not any(q["paused"] for q in app.get("/v1/queues", headers=ADMIN).json()["priorities"])
    done = app.post(cancel, data={"csrf": token}, headers={**session, "X-CSRF-Token": token})
    assert done.status_code == 200 and done.json()["status"] == "cancelled"


def test_plain_form_actions_work_and_redirect_back(app: TestClient) -> None:
    job_id = queued_job(app)
    token = page_token(app.get(f"/dashboard/jobs/{job_id}", auth=BASIC).text)
    moved = app.post(
        f"/dashboard/jobs/{job_id}/priority",
        data={"csrf": token, "priority": "low"},
        auth=BASIC,
        follow_redirects=False,
    )
    assert moved.status_code == 303 and moved.headers["location"] == f"/dashboard/jobs/{job_id}"
    assert get_job(app, job_id)["priority"] == "low"
    bad = app.post(
        f"/dashboard/jobs/{job_id}/priority", data={"csrf": token, "priority": "x"}, auth=BASIC
    )
    assert bad.status_code == 400 and bad.json()["field"] == "priority"
    paused = app.post("/dashboard/queues/low/pause", data={"csrf": token}, auth=BASIC)
    assert paused.status_code == 200  # followed the redirect to the queues page
    assert app.get("/v1/queues", headers=ADMIN).json()["priorities"][2]["paused"] is True
    app.post("/dashboard/queues/low/resume", data={"csrf": token}, auth=BASIC)
    assert app.get("/v1/queues", headers=ADMIN).json()["priorities"][2]["paused"] is False
    unknown = app.post("/dashboard/jobs/" + "0" * 24 + "/cancel", data={"csrf": token}, auth=BASIC)
    assert unknown.status_code == 404
    app.delete(f"/v1/jobs/{job_id}", headers=AUTH_A)


def test_without_an_admin_key_the_dashboard_is_off(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    redis = RedisProcess(tmp_path_factory.mktemp("dashboard-off") / "redis").start()
    try:
        with TestClient(create_app(job_settings(redis.url, admin_key=""))) as client:
            response = client.get("/dashboard", auth=("anyone", ""))
            assert response.status_code == 403
            assert client.post("/dashboard/login", data={"key": ""}).status_code == 403
    finally:
        redis.stop()


def test_static_files_are_served_from_the_package(app: TestClient) -> None:
    css = app.get("/dashboard/static/dashboard.css")
    js = app.get("/dashboard/static/dashboard.js")
    assert css.status_code == js.status_code == 200
    assert css.headers["content-type"].startswith("text/css")
    assert js.headers["content-type"].startswith("text/javascript")
    assert "@import" not in css.text and "url(" not in css.text  # nothing external
    assert app.get("/dashboard/static/__init__.py").status_code == 404  # only the two files
    assert app.get("/dashboard/static/other.js").status_code == 404
