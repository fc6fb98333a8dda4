// Drives the operator console and a browser-side viewer in headless
// Chromium (Debian's package, through playwright-core), against a running
// readbackd. Driven by tests/console.rs; prints one JSON line of findings
// and exits non-zero on the first failed check.
//
// env: BASE, ADMIN_TOKEN, AUDITOR_TOKEN, SERVICE_TOKEN, ALICE_TOKEN,
//      BOB_TOKEN, SCREENSHOT
import { chromium } from "playwright-core";
import { io } from "socket.io-client";

const env = (name) => {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set`);
  return value;
};
const BASE = env("BASE");
const findings = {};

function check(condition, message) {
  if (!condition) throw new Error(`check failed: ${message}`);
}

async function api(method, path, token, body) {
  const response = await fetch(`${BASE}/api/v1${path}`, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: response.status, body: await response.json().catch(() => null) };
}

const raise = (user, title, ackWithin = 600000, severity = "critical") =>
  api("POST", "/notifications", env("SERVICE_TOKEN"), {
    recipient: { userId: user },
    severity,
    title,
    ackWithin,
  });

// Waits for the status line to say `text`; a failure says what it said.
async function waitStatus(page, text, timeout = 5000) {
  try {
    await page.waitForSelector(`#status:has-text('${text}')`, { timeout });
  } catch {
    throw new Error(`status never said "${text}"; it says "${await page.textContent("#status")}"`);
  }
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const context = await browser.newContext({ viewport: { width: 1366, height: 768 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("response", (response) => {
    if (response.status() >= 400) problems.push(`${response.status()} for ${response.url()}`);
  });
  page.on("console", (message) => {
    if (message.type() === "error") problems.push(`console error: ${message.text()}`);
  });

  // The page loads, takes a pasted token and goes live.
  await page.goto(`${BASE}/console`);
  await page.fill("#token", env("ADMIN_TOKEN"));
  await page.click("#connect");
  await waitStatus(page, "Live");
  check(await page.isVisible("#admin-actions"), "admin actions shown to an admin");
  check(
    (await page.evaluate(() => localStorage.length)) === 0,
    "the token is not stored unless asked",
  );

  // A viewer is connected, so it shows among the users.
  const alice = io(BASE, { auth: { token: env("ALICE_TOKEN") }, transports: ["websocket"] });
  await new Promise((resolve, reject) => {
    alice.on("connected", resolve);
    alice.on("connect_error", reject);
  });
  await page.waitForSelector("#users tbody tr:has-text('alice')", { timeout: 6000 });

  // Some history, so every panel has something to show: an acknowledged
  // finding, one that goes overdue in a second, a session near expiry.
  const earlier = await raise("alice", "Acute subarachnoid haemorrhage");
  const earlierAck = await alice.timeout(5000).emitWithAck("acknowledge_notification", { notificationId: earlier.body.id });
  check(earlierAck.ok === true, `earlier ack ${JSON.stringify(earlierAck)}`);
  const overdue = await raise("carol", "Incidental pulmonary embolism", 1000, "urgent");
  check(overdue.status === 201, `raise answered ${overdue.status}`);
  const session = await fetch(`${BASE}/api/v1/sessions/ward-3-reading`, {
    method: "PUT",
    headers: { Authorization: `Bearer ${env("SERVICE_TOKEN")}`, "Content-Type": "application/json" },
    body: JSON.stringify({ userId: "alice", idleTimeout: 90000 }),
  });
  check(session.status === 201, `session answered ${session.status}`);
  await page.waitForSelector("#acks tbody tr:has-text('subarachnoid')", { timeout: 2000 });
  await page.waitForSelector("#sessions tbody tr:has-text('ward-3-reading')", { timeout: 6000 });
  const overdueRow = `#findings tbody tr[data-id="${overdue.body.id}"] td:nth-child(5)`;
  await page.waitForSelector(`${overdueRow}:has-text('OVERDUE by')`, { timeout: 3000 });
  findings.overdue = await page.textContent(overdueRow);
  // Past its deadline the scheduler escalates it; the level shows.
  const levelCell = `#findings tbody tr[data-id="${overdue.body.id}"] td:nth-child(6)`;
  await page.waitForSelector(`${levelCell}:has-text('escalated, level 1')`, { timeout: 6000 });

  // Raised over HTTP: in the open list within a second, with a countdown.
  const raised = await raise("alice", "Console check: tension pneumothorax");
  check(raised.status === 201, `raise answered ${raised.status}`);
  const started = Date.now();
  const row = `#findings tbody tr[data-id="${raised.body.id}"]`;
  await page.waitForSelector(row, { timeout: 1000 });
  findings.appearedMs = Date.now() - started;
  const due = await page.textContent(`${row} td:nth-child(5)`);
  check(/due in \d+:\d\d/.test(due), `countdown shown: ${due}`);
  findings.countdown = due;
  const severity = await page.textContent(`${row} td:nth-child(1)`);
  check(severity === "CRITICAL", `severity written in words: ${severity}`);

  // Server text is text: markup in a title is shown, never run.
  const hostile = await raise("erin", `Markup <img src=x onerror="window.__ran=1"> <b>check</b>`);
  const hostileRow = `#findings tbody tr[data-id="${hostile.body.id}"]`;
  await page.waitForSelector(hostileRow, { timeout: 2000 });
  const shown = await page.textContent(`${hostileRow} td:nth-child(2)`);
  check(shown.includes("<b>check</b>"), `markup shown as text: ${shown}`);
  check(
    await page.evaluate(() => document.querySelectorAll("#findings img, #findings b").length === 0 && !window.__ran),
    "markup in a title created no elements and ran nothing",
  );
  await api("POST", `/notifications/${hostile.body.id}/cancel`, env("SERVICE_TOKEN"), { reason: "test" });
  await page.waitForSelector(hostileRow, { state: "detached", timeout: 2000 });

  // The page fits 1366×768 without a horizontal scrollbar.
  const widths = await page.evaluate(() => [document.documentElement.scrollWidth, window.innerWidth]);
  check(widths[0] <= widths[1], `no horizontal scroll: ${widths}`);

  await page.screenshot({ path: env("SCREENSHOT"), fullPage: false });

  // Acknowledged from the viewer: gone from the list, listed as acknowledged.
  const ack = await alice.timeout(5000).emitWithAck("acknowledge_notification", { notificationId: raised.body.id });
  check(ack.ok === true, `ack answered ${JSON.stringify(ack)}`);
  const acknowledgedAt = Date.now();
  await page.waitForSelector(row, { state: "detached", timeout: 2000 });
  findings.removedMs = Date.now() - acknowledgedAt;
  await page.waitForSelector("#acks tbody tr:has-text('Console check')", { timeout: 2000 });

  // The admin actions, through the page's own forms.
  await page.fill("#raise-form input[name=userId]", "dave");
  await page.fill("#raise-form input[name=title]", "Raised from the console");
  await page.click("#raise-form button");
  await page.waitForSelector("#findings tbody tr:has-text('Raised from the console')", { timeout: 2000 });
  const alert = new Promise((resolve) => alice.once("system_alert", resolve));
  await page.fill("#broadcast-form input[name=message]", "Reading room 2 closes at 18:00");
  await page.selectOption("#broadcast-form select[name=level]", "warning");
  await page.click("#broadcast-form button");
  const alerted = await alert;
  check(alerted.message === "Reading room 2 closes at 18:00" && alerted.level === "warning", `broadcast ${JSON.stringify(alerted)}`);
  const dropped = new Promise((resolve) => alice.once("disconnect", resolve));
  await page.fill("#disconnect-form input[name=userId]", "alice");
  await page.fill("#disconnect-form input[name=reason]", "maintenance");
  await page.click("#disconnect-form button");
  await dropped;
  await waitStatus(page, "Disconnected 1 sockets of alice");
  alice.close();

  // Remembering the token is the user's choice, and forgetting it works.
  await page.check("#remember");
  await page.click("#connect");
  await waitStatus(page, "Live");
  check((await page.evaluate(() => localStorage.length)) === 1, "remembered when asked");
  await page.click("#forget");
  check((await page.evaluate(() => localStorage.length)) === 0, "forgotten");

  // An auditor sees the live page but no admin actions.
  const auditor = await browser.newPage({ viewport: { width: 1366, height: 768 } });
  await auditor.goto(`${BASE}/console`);
  await auditor.fill("#token", env("AUDITOR_TOKEN"));
  await auditor.click("#connect");
  await waitStatus(auditor, "Live");
  check(!(await auditor.isVisible("#admin-actions")), "admin actions hidden from an auditor");
  await auditor.waitForSelector("#acks tbody tr:has-text('Console check')", { timeout: 5000 });

  // A forged token is refused with the contract's message.
  const forged = await browser.newPage();
  await forged.goto(`${BASE}/console`);
  await forged.fill("#token", `${env("ADMIN_TOKEN").slice(0, -4)}AAAA`);
  await forged.click("#connect");
  await waitStatus(forged, "Invalid authentication token");

  // The viewer side in the browser: the page's socket.io-client (the one
  // hospital viewers use) connects, receives and acknowledges.
  const viewer = await browser.newPage();
  await viewer.goto(`${BASE}/console`);
  const received = viewer.evaluate(
    (token) =>
      new Promise((resolve, reject) => {
        const socket = window.io({ auth: { token }, transports: ["websocket"] });
        socket.on("connect_error", (error) => reject(new Error(error.message)));
        socket.on("connected", () => window.__viewerReady?.());
        socket.on("critical_notification", async (notification) => {
          const answer = await socket.timeout(5000).emitWithAck("acknowledge_notification", {
            notificationId: notification.id,
          });
          resolve({ id: notification.id, answer });
        });
      }),
    env("BOB_TOKEN"),
  );
  // Wait until the browser's viewer is connected, then raise for it.
  for (let i = 0; i < 50; i++) {
    const status = await api("GET", "/users/bob/status", env("SERVICE_TOKEN"));
    if (status.body?.connected) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const forBob = await raise("bob", "Browser viewer check");
  const got = await received;
  check(got.id === forBob.body.id, `browser viewer got ${got.id}`);
  check(got.answer.ok === true, `browser ack ${JSON.stringify(got.answer)}`);
  const stored = await api("GET", `/notifications/${forBob.body.id}`, env("SERVICE_TOKEN"));
  check(stored.body.state === "acknowledged", `stored state ${stored.body.state}`);
  check(stored.body.acknowledgement.acknowledgedBy === "bob", "acknowledged by bob");

  check(problems.length === 0, problems.join("; "));
  console.log(JSON.stringify({ ok: true, ...findings }));
} catch (error) {
  console.log(JSON.stringify({ ok: false, error: error.message, ...findings }));
  process.exitCode = 1;
} finally {
  await browser.close();
}
