// Raise -> viewer receipt latency through the real daemon.
// Usage: node benches/latency.mjs BASE_URL SERVICE_TOKEN VIEWER_TOKEN COUNT
// Raises COUNT notifications one after another for the viewer's user and
// measures, for each, the time from sending the HTTP request to the
// `critical_notification` arriving on the viewer's socket (this includes the
// durable commit that precedes the 201). Prints one JSON line of figures.
import { createRequire } from "node:module";
import { performance } from "node:perf_hooks";

const require = createRequire(new URL("../tests/js/package.json", import.meta.url));
const { io } = require("socket.io-client");

const [base, service, viewer, countArg] = process.argv.slice(2);
const count = Number(countArg ?? 500);
const userId = JSON.parse(Buffer.from(viewer.split(".")[1], "base64url")).sub;

const socket = io(base, { auth: { token: viewer }, transports: ["websocket"], reconnection: false });
await new Promise((ok, fail) => { socket.on("connected", ok); socket.on("connect_error", fail); });

const waiting = new Map();
socket.on("critical_notification", (n) => {
  const done = waiting.get(n.id);
  if (done) done(performance.now());
  socket.emit("acknowledge_notification", { notificationId: n.id });
});

const receipt = [], http = [];
for (let i = 0; i < count; i++) {
  const id = `bench-${process.pid}-${i}`;
  const arrived = new Promise((ok) => waiting.set(id, ok));
  const sent = performance.now();
  const res = await fetch(`${base}/api/v1/notifications`, {
    method: "POST",
    headers: { authorization: `Bearer ${service}`, "content-type": "application/json" },
    body: JSON.stringify({ id, recipient: { userId }, severity: "critical", title: "Benchmark finding" }),
  });
  const answered = performance.now();
  if (res.status !== 201) throw new Error(`raise answered ${res.status}: ${await res.text()}`);
  const at = await arrived;
  receipt.push(at - sent);
  http.push(answered - sent);
  waiting.delete(id);
}
socket.close();

const pct = (xs, p) => { const s = [...xs].sort((a, b) => a - b); return s[Math.min(s.length - 1, Math.floor(s.length * p))]; };
const round = (x) => Math.round(x * 100) / 100;
console.log(JSON.stringify({
  count,
  receipt_p50_ms: round(pct(receipt, 0.5)), receipt_p99_ms: round(pct(receipt, 0.99)),
  http_201_p50_ms: round(pct(http, 0.5)), http_201_p99_ms: round(pct(http, 0.99)),
}));
