// readback operator console: live over Socket.IO, details over the HTTP API.
// The token stays in this page's memory unless "remember" is ticked. Every
// server value is written with textContent, never parsed as HTML.
"use strict";

(() => {
  const STORAGE_KEY = "readback.console.token";
  const $ = (selector) => document.querySelector(selector);
  const state = { token: null, roles: [], socket: null, findings: [], sessions: [], timer: null, pending: null };

  // ---- small helpers -------------------------------------------------------

  function setStatus(text, isError = false) {
    const status = $("#status");
    status.textContent = text;
    status.classList.toggle("error", isError);
  }

  function claims(token) {
    try {
      const payload = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
      return JSON.parse(atob(payload));
    } catch {
      return {};
    }
  }

  function rolesOf(payload) {
    const roles = payload.roles ?? payload.role ?? [];
    return Array.isArray(roles) ? roles.map(String) : [String(roles)];
  }

  async function api(method, path, body) {
    // A refresh still running when the token is forgotten stops here
    // instead of sending "Bearer null".
    if (!state.token) throw new Error("Not connected");
    const response = await fetch(`/api/v1${path}`, {
      method,
      headers: {
        Authorization: `Bearer ${state.token}`,
        ...(body ? { "Content-Type": "application/json" } : {}),
      },
      body: body ? JSON.stringify(body) : undefined,
    });
    const text = await response.text();
    const data = text ? JSON.parse(text) : null;
    if (!response.ok) {
      const error = new Error(data?.detail ?? data?.title ?? `HTTP ${response.status}`);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function clock(iso) {
    return iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : "—";
  }

  function span(ms) {
    const total = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = String(total % 60).padStart(2, "0");
    return h > 0 ? `${h}h ${String(m).padStart(2, "0")}m` : `${m}:${s}`;
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    td.textContent = text ?? "—";
    td.title = td.textContent;
    if (className) td.className = className;
    row.appendChild(td);
    return td;
  }

  function fill(tableId, items, render) {
    const table = $(tableId);
    const body = table.querySelector("tbody");
    body.replaceChildren(
      ...items.map((item) => {
        const row = document.createElement("tr");
        render(row, item);
        return row;
      }),
    );
    const note = table.parentElement.querySelector(".empty");
    note.dataset.text ??= note.textContent;
    note.textContent = note.dataset.text;
    note.hidden = items.length > 0;
  }

  function unavailable(tableId, error) {
    const table = $(tableId);
    table.querySelector("tbody").replaceChildren();
    const note = table.parentElement.querySelector(".empty");
    note.dataset.text ??= note.textContent;
    note.hidden = false;
    note.textContent = error.status === 403 ? "Not available to your role." : `Could not load: ${error.message}`;
  }

  const recipientOf = (n) => (n.recipient?.userId ? n.recipient.userId : `role ${n.recipient?.role ?? "?"}`);

  // ---- panels --------------------------------------------------------------

  function dueText(deadline, now) {
    const left = new Date(deadline).getTime() - now;
    if (left < 0) return { text: `⚠ OVERDUE by ${span(-left)}`, className: "due overdue" };
    if (left < 120000) return { text: `due in ${span(left)} (soon)`, className: "due soon" };
    return { text: `due in ${span(left)}`, className: "due ok" };
  }

  function renderFindings() {
    const now = Date.now();
    fill("#findings", state.findings, (row, n) => {
      row.dataset.id = n.id;
      cell(row, n.severity.toUpperCase(), `severity-${n.severity}`);
      cell(row, n.title);
      cell(row, recipientOf(n));
      cell(row, clock(n.createdAt));
      const due = dueText(n.ackDeadline, now);
      cell(row, due.text, due.className);
      cell(
        row,
        n.state === "escalated" ? `▲ escalated, level ${n.escalationLevel ?? "?"}` : "not escalated",
        n.state === "escalated" ? "escalated" : "",
      );
    });
    $("#findings-count").textContent = `(${state.findings.length})`;
  }

  function renderSessions() {
    const now = Date.now();
    fill("#sessions", state.sessions, (row, s) => {
      cell(row, s.userId);
      cell(row, s.sessionId);
      const left = new Date(s.expiresAt).getTime() - now;
      cell(row, left > 0 ? `in ${span(left)}` : "expiring now", left < 120000 ? "due soon" : "");
      cell(row, s.warned ? "warned" : "no");
    });
  }

  async function loadFindings() {
    try {
      const [pending, escalated] = await Promise.all([
        api("GET", "/notifications?state=pending&limit=200"),
        api("GET", "/notifications?state=escalated&limit=200"),
      ]);
      // The level of an escalated finding is in its trace.
      await Promise.all(
        escalated.items.map(async (n) => {
          try {
            const full = await api("GET", `/notifications/${encodeURIComponent(n.id)}`);
            n.escalationLevel = full.escalations?.length ?? null;
          } catch {
            n.escalationLevel = null;
          }
        }),
      );
      state.findings = [...pending.items, ...escalated.items].sort(
        (a, b) => new Date(a.ackDeadline) - new Date(b.ackDeadline),
      );
      renderFindings();
    } catch (error) {
      unavailable("#findings", error);
    }
  }

  async function loadAcks() {
    try {
      const acked = await api("GET", "/notifications?state=acknowledged&limit=20");
      fill("#acks", acked.items, (row, n) => {
        const ack = n.acknowledgement ?? {};
        cell(row, n.title);
        cell(row, ack.acknowledgedBy);
        cell(row, clock(ack.acknowledgedAt));
        const took = new Date(ack.acknowledgedAt) - new Date(n.createdAt);
        const late = new Date(ack.acknowledgedAt) > new Date(n.ackDeadline);
        cell(row, `${span(took)}${late ? " (after deadline)" : ""}`, late ? "due overdue" : "");
      });
    } catch (error) {
      unavailable("#acks", error);
    }
  }

  async function loadUsers() {
    try {
      const connections = await api("GET", "/connections");
      fill("#users", connections.users, (row, u) => {
        cell(row, u.userId);
        cell(row, (u.roles ?? []).join(", "));
        cell(row, String(u.sockets));
        cell(row, clock(u.connectedAt));
      });
      $("#users-count").textContent = `(${connections.totalUsers} users, ${connections.totalSockets} sockets)`;
    } catch (error) {
      unavailable("#users", error);
    }
  }

  async function loadSessions() {
    try {
      const sessions = await api("GET", "/sessions?limit=20");
      state.sessions = sessions.items;
      renderSessions();
    } catch (error) {
      unavailable("#sessions", error);
    }
  }

  const loaders = { findings: loadFindings, acks: loadAcks, users: loadUsers, sessions: loadSessions };
  const affected = {
    raised: ["findings"],
    acknowledged: ["findings", "acks"],
    cancelled: ["findings"],
    escalated: ["findings"],
    connected: ["users"],
    disconnected: ["users"],
    session: ["sessions"],
  };

  function refresh(panels = Object.keys(loaders)) {
    return Promise.all(panels.map((panel) => loaders[panel]()));
  }

  // Updates arrive in bursts: gather them for a moment, then reload once.
  function scheduleRefresh(panels) {
    if (!state.pending) {
      state.pending = new Set();
      setTimeout(() => {
        const wanted = [...state.pending];
        state.pending = null;
        refresh(wanted);
      }, 150);
    }
    panels.forEach((panel) => state.pending.add(panel));
  }

  // ---- connection ----------------------------------------------------------

  function connect(token) {
    disconnect();
    state.token = token;
    const payload = claims(token);
    state.roles = rolesOf(payload);
    $("#who").textContent = `Signed in as ${payload.sub ?? "?"} (${state.roles.join(", ") || "no role"})`;
    $("#admin-actions").hidden = !state.roles.includes("admin");
    setStatus("Connecting…");
    // forceNew: a new token must not reuse the previous connection.
    const socket = io({ auth: { token }, transports: ["websocket"], forceNew: true });
    state.socket = socket;
    socket.on("connect", () => {
      socket.emit("subscribe", { topic: "readback.console" }, (answer) => {
        if (answer?.ok) {
          setStatus(`Live — updates as they happen (connected ${clock(new Date().toISOString())}).`);
        } else {
          setStatus(`Connected; live feed refused (${answer?.message ?? "no answer"}), refreshing every 5 s.`, true);
        }
      });
      refresh();
    });
    socket.on("connect_error", (error) => setStatus(`Cannot connect: ${error.message}`, true));
    socket.on("disconnect", (reason) => setStatus(`Disconnected (${reason}); reconnecting…`, true));
    socket.on("console_update", (update) => scheduleRefresh(affected[update?.kind] ?? Object.keys(loaders)));
    socket.on("system_alert", (alert) => setStatus(`System alert (${alert.level}): ${alert.message}`));
    state.timer = setInterval(() => refresh(), 5000);
  }

  function disconnect() {
    if (state.socket) state.socket.close();
    if (state.timer) clearInterval(state.timer);
    state.socket = null;
    state.timer = null;
  }

  // ---- forms ---------------------------------------------------------------

  function onSubmit(id, action) {
    $(id).addEventListener("submit", async (event) => {
      event.preventDefault();
      const form = event.currentTarget;
      const values = Object.fromEntries(new FormData(form).entries());
      try {
        setStatus(await action(values));
        refresh();
      } catch (error) {
        setStatus(`Refused: ${error.message}`, true);
      }
    });
  }

  $("#login").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("#token").value.trim();
    if ($("#remember").checked) localStorage.setItem(STORAGE_KEY, token);
    else localStorage.removeItem(STORAGE_KEY);
    connect(token);
  });
  $("#forget").addEventListener("click", () => {
    localStorage.removeItem(STORAGE_KEY);
    $("#token").value = "";
    $("#remember").checked = false;
    disconnect();
    state.token = null;
    setStatus("Token forgotten; disconnected.");
  });
  onSubmit("#raise-form", async (v) => {
    const raised = await api("POST", "/notifications", {
      type: "critical_finding",
      severity: v.severity,
      title: v.title,
      recipient: { userId: v.userId },
    });
    return `Raised ${raised.id} for ${v.userId}.`;
  });
  onSubmit("#broadcast-form", async (v) => {
    const sent = await api("POST", "/broadcast", { message: v.message, level: v.level });
    return `Broadcast to ${sent.sockets} sockets.`;
  });
  onSubmit("#disconnect-form", async (v) => {
    const done = await api(
      "DELETE",
      `/users/${encodeURIComponent(v.userId)}/connections`,
      v.reason ? { reason: v.reason } : undefined,
    );
    return `Disconnected ${done.disconnected} sockets of ${v.userId}.`;
  });

  // Countdowns tick every second without asking the server.
  setInterval(() => {
    if (state.token) {
      renderFindings();
      renderSessions();
    }
  }, 1000);

  const remembered = localStorage.getItem(STORAGE_KEY);
  if (remembered) {
    $("#token").value = remembered;
    $("#remember").checked = true;
    connect(remembered);
  }
})();
