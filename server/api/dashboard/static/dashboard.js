// "Attest now": request fresh evidence for a site, then show which hosts answered.
"use strict";
(function () {
  const section = document.querySelector("section.attest");
  if (!section) return;
  const button = document.getElementById("attest-now");
  const status = document.getElementById("attest-status");
  const table = document.getElementById("attest-hosts");
  const site = section.dataset.site;
  let timer = null;

  function render(data) {
    const body = table.tBodies[0];
    body.replaceChildren();
    for (const h of data.hosts) {
      const row = body.insertRow();
      const name = row.insertCell();
      const link = document.createElement("a");
      link.href = "/dashboard/hosts/" + encodeURIComponent(h.host_id);
      link.textContent = h.hostname || h.host_id.slice(0, 12);
      name.appendChild(link);
      const cell = row.insertCell();
      const badge = document.createElement("span");
      badge.className = "badge " + (h.answered ? "ok" : "unknown");
      badge.textContent = h.answered ? "✓ answered " + (h.answered_at || "") : "… waiting";
      cell.appendChild(badge);
    }
    table.hidden = data.hosts.length === 0;
    status.textContent = data.answered + " of " + data.total + " hosts answered";
  }

  async function poll(since, deadline) {
    const url = "/dashboard/sites/" + encodeURIComponent(site) + "/attest-status?since=" + encodeURIComponent(since);
    const resp = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (!resp.ok) { status.textContent = "Could not read the answers (" + resp.status + ")."; return; }
    const data = await resp.json();
    render(data);
    if (data.answered < data.total && Date.now() < deadline) {
      timer = setTimeout(function () { poll(since, deadline); }, 2000);
    } else if (data.answered < data.total) {
      status.textContent += "; still waiting after 5 minutes (hosts answer at their next check-in).";
    }
  }

  button.addEventListener("click", async function () {
    if (timer) clearTimeout(timer);
    button.disabled = true;
    status.textContent = "Requesting fresh evidence…";
    try {
      const resp = await fetch("/dashboard/sites/" + encodeURIComponent(site) + "/attest", {
        method: "POST",
        credentials: "same-origin",
        headers: { "X-CSRF-Token": section.dataset.csrf, Accept: "application/json" },
      });
      const data = await resp.json();
      if (!resp.ok) { status.textContent = "Refused: " + (data.detail || resp.status); return; }
      status.textContent = "Challenged " + data.challenges.length + " hosts; waiting for answers…";
      poll(data.requested_at, Date.now() + 300000);
    } catch (err) {
      status.textContent = "Request failed: " + err;
    } finally {
      button.disabled = false;
    }
  });
})();
