// imgsrv dashboard: keeps the view current and sends actions with their CSRF token.
// The pages are complete without it (readable with JavaScript off).
"use strict";

(function () {
  const body = document.body;
  const refresh = Math.max(1, parseFloat(body.dataset.refresh || "5")) * 1000;
  const status = document.getElementById("status");

  function say(text) {
    if (status) status.textContent = text;
  }

  function busy() {
    const active = document.activeElement;
    return active && active.closest && active.closest("main form") !== null;
  }

  async function update() {
    if (document.hidden || busy()) return;
    try {
      const answer = await fetch(location.href, {
        headers: { "X-Dashboard-Fragment": "1" },
        credentials: "same-origin",
      });
      if (!answer.ok) { say("update failed: HTTP " + answer.status); return; }
      const html = await answer.text();
      const view = document.getElementById("view");
      if (view) view.outerHTML = html;
      say("updated " + new Date().toLocaleTimeString());
    } catch (error) {
      say("update failed: " + error.message);
    }
  }

  document.addEventListener("submit", async function (event) {
    const form = event.target;
    if (!(form instanceof HTMLFormElement) || form.method.toLowerCase() !== "post") return;
    if (!form.classList.contains("action")) return;
    event.preventDefault();
    const data = new FormData(form);
    try {
      const answer = await fetch(form.action, {
        method: "POST",
        body: new URLSearchParams(data),
        headers: { "X-CSRF-Token": String(data.get("csrf") || ""), "Accept": "application/json" },
        credentials: "same-origin",
      });
      const result = await answer.json();
      say(answer.ok ? (form.dataset.action + ": done") : (result.title + ": " + (result.detail || "")));
    } catch (error) {
      say("action failed: " + error.message);
    }
    if (document.activeElement instanceof HTMLElement) document.activeElement.blur();
    await update();
  });

  setInterval(update, refresh);
})();
