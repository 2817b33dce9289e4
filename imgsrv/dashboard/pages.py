"""The HTML of the dashboard's views, from the same data the JSON API answers.

Every value goes through :func:`html.escape`; numbers carry ``data-field`` attributes so that
tests (and scripts) can read them. A view is a ``<main>`` inside a shared frame: the script
replaces the ``<main>`` every few seconds with a fresh one from the server, and without
JavaScript a ``<meta http-equiv=refresh>`` reloads the page instead.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import urlencode

PRIORITIES = ("high", "normal", "low")
STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
VIEWS = (
    ("/dashboard", "Queues"),
    ("/dashboard/jobs", "Jobs"),
    ("/dashboard/workers", "Workers"),
    ("/dashboard/schedules", "Schedules"),
    ("/dashboard/traffic", "Cache & traffic"),
)


def _text(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return escape(str(value))


def _cell(value: Any, field: str = "", **data: str) -> str:
    attrs = f' data-field="{escape(field)}"' if field else ""
    attrs += "".join(f' data-{escape(k)}="{escape(v)}"' for k, v in data.items())
    return f"<td{attrs}>{_text(value)}</td>"


def _table(headers: Sequence[str], rows: Iterable[str], name: str) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in headers)
    body = "".join(rows) or f'<tr><td colspan="{len(headers)}" class="empty">none</td></tr>'
    return (
        f'<table data-table="{escape(name)}"><thead><tr>{head}</tr></thead>'
        f"<tbody>{body}</tbody></table>"
    )


def action_form(
    action: str,
    csrf: str,
    label: str,
    fields: Mapping[str, str] | None = None,
    extra: str = "",
    scripted: bool = True,
) -> str:
    """A POST form to a dashboard action, with its CSRF token; ``scripted`` ones are sent by
    the page's script (which then updates the view) rather than by a page load."""
    hidden = "".join(
        f'<input type="hidden" name="{escape(k)}" value="{escape(v)}">'
        for k, v in {"csrf": csrf, **(fields or {})}.items()
    )
    return (
        f'<form method="post" action="{escape(action)}" '
        f'class="{"action" if scripted else "plain"}" '
        f'data-action="{escape(label)}">'
        f'{hidden}{extra}<button type="submit">{escape(label)}</button></form>'
    )


def frame(title: str, path: str, main: str, refresh: float, csrf: str) -> str:
    """The whole page around a view's ``<main>``."""
    nav = "".join(
        f'<a href="{href}"{" aria-current=page" if href == path else ""}>{escape(name)}</a>'
        for href, name in VIEWS
    )
    return f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{escape(title)} · imgsrv</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/dashboard/static/dashboard.css">
<noscript><meta http-equiv="refresh" content="{int(refresh)}"></noscript>
<script src="/dashboard/static/dashboard.js" defer></script>
</head>
<body data-refresh="{refresh:g}" data-csrf="{escape(csrf)}">
<header><strong>imgsrv</strong><nav>{nav}</nav>
{action_form("/dashboard/logout", csrf, "Sign out", scripted=False)}
</header>
<p id="status" role="status"></p>
{main}
</body>
</html>
"""


def main(title: str, body: str) -> str:
    return f'<main id="view"><h1>{escape(title)}</h1>{body}</main>'


def queues_view(queues: Mapping[str, Any], csrf: str) -> str:
    rows = []
    tenant_rows = []
    for entry in queues["priorities"]:
        priority = entry["priority"]
        toggle = "resume" if entry["paused"] else "pause"
        form = action_form(f"/dashboard/queues/{priority}/{toggle}", csrf, toggle.capitalize())
        rows.append(
            f'<tr data-priority="{priority}"><th>{priority}</th>'
            + _cell(entry["depth"], "depth", priority=priority)
            + _cell(entry["oldest_age_s"], "oldest_age_s", priority=priority)
            + _cell("paused" if entry["paused"] else "active", "paused", priority=priority)
            + f"<td>{form}</td></tr>"
        )
        for row in entry["tenants"]:
            tenant_rows.append(
                f"<tr><td>{priority}</td><td>{escape(row['tenant'])}</td>"
                + _cell(row["depth"], "tenant_depth", priority=priority, tenant=row["tenant"])
                + _cell(row["oldest_age_s"], "tenant_oldest_age_s")
                + "</tr>"
            )
    totals = (
        f'<p class="totals">Running <b data-field="running">{queues["running"]}</b> · delayed '
        f'<b data-field="delayed">{queues["delayed"]}</b> · waiting for dependencies '
        f'<b data-field="blocked">{queues["blocked"]}</b></p>'
    )
    return main(
        "Queues",
        totals
        + _table(["Priority", "Ready", "Oldest (s)", "State", ""], rows, "priorities")
        + "<h2>By tenant</h2>"
        + _table(["Priority", "Tenant", "Ready", "Oldest (s)"], tenant_rows, "tenants"),
    )


def _select(name: str, options: Sequence[str], chosen: str, blank: str) -> str:
    items = [f'<option value="">{escape(blank)}</option>'] + [
        f'<option value="{escape(o)}"{" selected" if o == chosen else ""}>{escape(o)}</option>'
        for o in options
    ]
    return f'<label>{escape(name)} <select name="{escape(name)}">{"".join(items)}</select></label>'


def jobs_view(
    jobs: Sequence[Mapping[str, Any]], filters: Mapping[str, str], tenants: Sequence[str]
) -> str:
    form = (
        '<form method="get" action="/dashboard/jobs" class="filters">'
        + _select("status", STATUSES, filters.get("status", ""), "any status")
        + _select("tenant", tenants, filters.get("tenant", ""), "any tenant")
        + _select("priority", PRIORITIES, filters.get("priority", ""), "any priority")
        + '<button type="submit">Filter</button></form>'
    )
    rows = [
        f'<tr data-job="{escape(job["id"])}">'
        f'<td><a href="/dashboard/jobs/{escape(job["id"])}">{escape(job["id"])}</a></td>'
        + _cell(job["tenant"], "tenant")
        + _cell(job["priority"], "priority")
        + _cell(job["status"], "status")
        + _cell(f"{job['progress']['done']}/{job['progress']['total']}", "progress")
        + _cell(job["attempts"], "attempts")
        + _cell(job["created_at"], "created_at")
        + _cell(job["finished_at"], "finished_at")
        + "</tr>"
        for job in jobs
    ]
    headers = ["Job", "Tenant", "Priority", "Status", "Variants", "Attempts", "Created", "Finished"]
    return main("Jobs", form + _table(headers, rows, "jobs"))


def job_view(job: Mapping[str, Any], csrf: str) -> str:
    job_id = job["id"]
    actions = []
    if job["status"] in ("queued", "running") and not job["cancel_requested"]:
        actions.append(action_form(f"/dashboard/jobs/{job_id}/cancel", csrf, "Cancel"))
    if job["status"] in ("failed", "cancelled"):
        actions.append(action_form(f"/dashboard/jobs/{job_id}/retry", csrf, "Retry"))
    if job["status"] == "queued":
        choice = "".join(
            f'<option value="{p}"{" selected" if p == job["priority"] else ""}>{p}</option>'
            for p in PRIORITIES
        )
        actions.append(
            action_form(
                f"/dashboard/jobs/{job_id}/priority",
                csrf,
                "Change priority",
                extra=f'<select name="priority" aria-label="priority">{choice}</select>',
            )
        )
    facts = "".join(
        f"<dt>{escape(label)}</dt><dd data-field=\"{field}\">{_text(job.get(field))}</dd>"
        for label, field in (
            ("Status", "status"), ("Tenant", "tenant"), ("Priority", "priority"),
            ("Source", "source"), ("Attempts", "attempts"), ("Max attempts", "max_attempts"),
            ("Created", "created_at"), ("Started", "started_at"), ("Finished", "finished_at"),
            ("Schedule", "schedule"),
        )
    )  # fmt: skip
    thumbs = []
    for index, variant in enumerate(job["variants"]):
        result = variant["result"]
        options = escape(urlencode({k: str(v) for k, v in variant["options"].items()}))
        if result:
            thumbs.append(
                f'<figure data-variant="{index}"><a href="{escape(result["url"])}">'
                f'<img src="{escape(result["url"])}" alt="variant {index}" loading="lazy"></a>'
                f"<figcaption>{result['width']}x{result['height']} {escape(result['format'])}, "
                f"{result['bytes']} B<br><code>{options}</code></figcaption></figure>"
            )
        else:
            thumbs.append(
                f'<figure data-variant="{index}" class="pending"><figcaption>not rendered'
                f"<br><code>{options}</code></figcaption></figure>"
            )
    deps = [
        f'<tr><td><a href="/dashboard/jobs/{escape(d["id"])}">{escape(d["id"])}</a></td>'
        + _cell(d["status"], "dependency_status")
        + "</tr>"
        for d in job["dependencies"]
    ]
    timeline = [
        "<tr>"
        + _cell(event["at"])
        + _cell(event["event"], "event")
        + _cell(", ".join(f"{k}={v}" for k, v in event.items() if k not in ("at", "event")))
        + "</tr>"
        for event in job["timeline"]
    ]
    error = (
        f'<pre class="error" data-field="error">{escape(str(job["error"]))}</pre>'
        if job["error"]
        else ""
    )
    body = (
        f'<div class="actions">{"".join(actions)}</div><dl class="facts">{facts}</dl>{error}'
        f'<h2>Variants</h2><div class="thumbs">{"".join(thumbs)}</div>'
        "<h2>Dependencies</h2>"
        + _table(["Job", "Status"], deps, "dependencies")
        + "<h2>Timeline</h2>"
        + _table(["At", "Event", "Details"], timeline, "timeline")
    )
    return main(f"Job {job_id}", body)


def workers_view(workers: Mapping[str, Any]) -> str:
    rows = [
        f'<tr data-worker="{escape(w["id"])}" class="{escape(w["state"])}">'
        + _cell(w["id"], "id")
        + _cell(w["kind"], "kind")
        + _cell(w["host"], "host")
        + _cell(w["pid"], "pid")
        + _cell(w["version"], "version")
        + _cell(w["concurrency"], "concurrency")
        + _cell(w["state"], "state")
        + _cell(", ".join(w["current_jobs"]) or None, "current_jobs")
        + _cell(w["heartbeat_age_s"], "heartbeat_age_s")
        + "</tr>"
        for w in workers["workers"]
    ]
    headers = [
        "Worker",
        "Kind",
        "Host",
        "Pid",
        "Version",
        "Slots",
        "State",
        "Running",
        "Beat (s ago)",
    ]
    online = f'<p class="totals">Online <b data-field="online">{workers["online"]}</b></p>'
    return main("Workers", online + _table(headers, rows, "workers"))


def schedules_view(schedules: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        f'<tr data-schedule="{escape(s["id"])}">'
        + _cell(s["id"], "id")
        + _cell(s["tenant"], "tenant")
        + _cell(s["cron"], "cron")
        + _cell(s["timezone"], "timezone")
        + _cell(s["next_run"], "next_run")
        + _cell(s["last_run"], "last_run")
        + (
            f'<td data-field="last_job"><a href="/dashboard/jobs/{escape(s["last_job"])}">'
            f"{escape(s['last_job'])}</a></td>"
            if s["last_job"]
            else _cell(None, "last_job")
        )
        + _cell(s["fired"], "fired")
        + "</tr>"
        for s in schedules
    ]
    headers = [
        "Schedule",
        "Tenant",
        "Cron",
        "Time zone",
        "Next run",
        "Last run",
        "Last job",
        "Fired",
    ]
    return main("Schedules", _table(headers, rows, "schedules"))


def traffic_view(stats: Mapping[str, Any]) -> str:
    rows = [
        f"<tr><th>{escape(label)}</th>" + _cell(stats[field], field) + "</tr>"
        for label, field in (
            ("L1 hit ratio", "l1_hit_ratio"), ("L2 hit ratio", "l2_hit_ratio"),
            ("L1 bytes", "l1_bytes"), ("Requests/s", "requests_per_s"),
            ("Image p50 (ms)", "p50_ms"), ("Image p99 (ms)", "p99_ms"),
            ("Shed/s (503)", "shed_per_s"), ("Shed ratio", "shed_ratio"),
            ("Window (s)", "window_s"),
        )
    ]  # fmt: skip
    rows += [
        f"<tr><th>{escape(name)}</th>" + _cell(value, name) + "</tr>"
        for name, value in sorted(stats["egress"].items())
    ]
    note = (
        "<p>This instance, all its processes. Rates and percentiles cover the window between "
        "two looks at the page; hit ratios count since the start.</p>"
    )
    return main("Cache & traffic", note + _table(["", "Value"], rows, "traffic"))


def login_page(message: str = "") -> str:
    alert = f'<p class="error" role="alert">{escape(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>Sign in · imgsrv</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/dashboard/static/dashboard.css"></head>
<body><main id="view" class="login"><h1>imgsrv dashboard</h1>{alert}
<form method="post" action="/dashboard/login">
<label>Admin key <input type="password" name="key" autocomplete="current-password" required></label>
<button type="submit">Sign in</button></form>
<p>Or use HTTP Basic authentication with any user name and the admin key as password.</p>
</main></body></html>
"""
