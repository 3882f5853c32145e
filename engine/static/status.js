// hl7engine status page: polls api/status every 2 s and renders one card per channel.
// DOM is built with textContent only (no innerHTML), so nothing from the server is ever
// interpreted as markup. The optional admin token stays in this tab's sessionStorage.
"use strict";

(function () {
  const POLL_MS = 2000;
  const TOKEN_KEY = "hl7engine.status.token";
  const OK_CODES = new Set(["AA", "CA", "commit_ack"]);
  const REJECT_CODES = new Set(["AR", "CR", "commit_nak"]);
  const ERROR_LABELS = [
    ["negative_acks", "AE/AR/CE/CR sent"],
    ["frames_rejected", "frames rejected"],
    ["quarantined", "quarantined"],
    ["connections_refused", "connections refused"],
    ["delivery_failures", "delivery failures"],
    ["retries", "retries"],
  ];
  const previous = new Map(); // "channel/field" -> last value, to flash what changed

  const $ = (id) => document.getElementById(id);

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value !== undefined && value !== null) node.setAttribute(key, String(value));
    }
    for (const child of children) {
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  function count(n) {
    return n === null || n === undefined ? "—" : Number(n).toLocaleString("en-US");
  }

  function perMinute(n) {
    if (n === null || n === undefined) return "—";
    return n >= 100 ? Math.round(n).toLocaleString("en-US") : n.toFixed(1);
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "—";
    const s = Math.round(seconds);
    if (s < 60) return s + " s";
    if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
    if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
    return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
  }

  function localTime(iso) {
    return iso ? new Date(iso).toLocaleString() : "—";
  }

  function stat(channel, field, label, value, text, level) {
    const key = channel + "/" + field;
    const changed = previous.has(key) && previous.get(key) !== value;
    previous.set(key, value);
    return el("div", { class: "stat" + (level ? " " + level : "") },
      el("span", { class: "label" }, label),
      el("span", {
        class: "value" + (changed ? " changed" : ""),
        "data-field": field,
        "data-value": value === null || value === undefined ? "" : value,
      }, text));
  }

  function ackChips(acks) {
    const codes = Object.keys(acks);
    if (codes.length === 0) return el("div", { class: "acks muted" }, "none yet");
    return el("div", { class: "acks" }, ...codes.map((code) => {
      const kind = OK_CODES.has(code) ? "ok" : REJECT_CODES.has(code) ? "reject" : "error";
      return el("span", { class: "ack", "data-ack": code, "data-kind": kind, "data-value": acks[code] },
        code + " " + count(acks[code]));
    }));
  }

  function errorList(errors) {
    return el("div", { class: "errors" }, ...ERROR_LABELS.map(([key, label]) =>
      el("div", { class: errors[key] ? "nonzero" : "", "data-error": key },
        label, el("span", { class: "n", "data-value": errors[key] }, count(errors[key])))));
  }

  function deadTable(rows) {
    if (rows.length === 0) return el("p", { class: "muted" }, "No dead letters.");
    return el("table", { class: "dead" },
      el("thead", {}, el("tr", {}, el("th", {}, "id"), el("th", {}, "dead since"),
        el("th", {}, "tries"), el("th", {}, "reason"))),
      el("tbody", {}, ...rows.map((row) => el("tr", { "data-dead-id": row.id },
        el("td", {}, row.id), el("td", {}, localTime(row.dead_at || row.received_at)),
        el("td", {}, row.attempts), el("td", { class: "reason" }, row.reason || "—")))));
  }

  function card(ch) {
    const q = ch.queue || {};
    const age = q.oldest_pending_age_s;
    const section = el("section", { class: "channel", "data-channel": ch.name },
      el("h2", {}, ch.name, el("span", { class: "badge", "data-state": ch.state }, ch.state)),
      el("div", { class: "stats" },
        stat(ch.name, "messages_per_minute", "messages / min", ch.messages_per_minute,
          perMinute(ch.messages_per_minute)),
        stat(ch.name, "received_total", "received", ch.received_total, count(ch.received_total)),
        stat(ch.name, "connections_open", "connections open", ch.connections_open, count(ch.connections_open)),
        stat(ch.name, "queue_pending", "queue depth", q.pending, count(q.pending)),
        stat(ch.name, "oldest_pending", "oldest pending", age, duration(age),
          age >= 1800 ? "alert" : age >= 300 ? "warn" : ""),
        stat(ch.name, "dead", "dead letters", q.dead, count(q.dead), q.dead ? "alert" : "")),
      el("h3", {}, "ACKs sent"), ackChips(ch.acks),
      el("h3", {}, "Errors"), errorList(ch.errors));
    if (Array.isArray(ch.dead_letters)) {
      section.append(el("h3", {}, "Last dead letters"), deadTable(ch.dead_letters));
    }
    return section;
  }

  function render(data) {
    const state = $("engine-state");
    state.dataset.state = data.ready ? "ready" : "not_ready";
    state.textContent = data.ready ? "ready" : "not ready";
    state.title = Object.entries(data.checks || {}).map(([k, v]) => k + ": " + v).join("\n");
    $("channels").replaceChildren(...data.channels.map(card));
    $("empty").hidden = data.channels.length > 0;
    $("window").textContent = data.rate_window_s ? Math.round(data.rate_window_s) + " s" : "minute";
    $("updated").textContent = "updated " + new Date().toLocaleTimeString();
    $("updated").dataset.generatedAt = data.generated_at;
  }

  function showBanner(text) {
    const banner = $("banner");
    banner.hidden = !text;
    banner.textContent = text || "";
  }

  async function poll() {
    const headers = { Accept: "application/json" };
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    try {
      const response = await fetch("api/status", { headers, cache: "no-store" });
      if (response.status === 401 || response.status === 403) {
        sessionStorage.removeItem(TOKEN_KEY);
        $("token-form").hidden = false;
        $("poll-dot").className = "dot lost";
        showBanner(response.status === 401 ? "A valid admin token is needed." : "This token may not view status.");
        return;
      }
      if (!response.ok) throw new Error("HTTP " + response.status);
      render(await response.json());
      $("token-form").hidden = true;
      $("poll-dot").className = "dot live";
      showBanner("");
    } catch (err) {
      $("poll-dot").className = "dot lost";
      showBanner("Cannot reach the engine's admin API (" + err.message + "); retrying.");
    } finally {
      setTimeout(poll, POLL_MS);
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token").value.trim();
      if (value) sessionStorage.setItem(TOKEN_KEY, value);
      $("token").value = "";
      $("token-form").hidden = true;
    });
    poll();
  });
})();
