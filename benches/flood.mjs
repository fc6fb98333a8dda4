// An unauthenticated flood: forged tokens as fast as CONCURRENCY loops can
// send them, for SECONDS. Half the loops POST raises with a forged token and
// an attacker-sized User-Agent (8 KiB); the other half open Socket.IO
// connections (WebSocket) with a forged token. Every request must be
// refused. Prints one JSON line: refusals per second by kind.
// Usage: node benches/flood.mjs BASE_URL SECONDS CONCURRENCY
import { createRequire } from "node:module";

const require = createRequire(new URL("../tests/js/package.json", import.meta.url));
const { io } = require("socket.io-client");

const [base, secondsArg, concurrencyArg] = process.argv.slice(2);
const seconds = Number(secondsArg ?? 20);
const concurrency = Number(concurrencyArg ?? 32);
const until = Date.now() + seconds * 1000;

// A token in shape, signed with a key readback does not know.
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const forged = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: "mallory", roles: ["service"], exp: 4102444800 })}.${"A".repeat(43)}`;
const userAgent = "flood/" + "x".repeat(8192);

let http = 0, sockets = 0, accepted = 0, errors = 0;

async function httpLoop() {
  while (Date.now() < until) {
    try {
      const res = await fetch(`${base}/api/v1/notifications`, {
        method: "POST",
        headers: { authorization: `Bearer ${forged}`, "content-type": "application/json", "user-agent": userAgent },
        body: JSON.stringify({ recipient: { userId: "victim" }, severity: "critical", title: "forged" }),
      });
      await res.arrayBuffer();
      if (res.status === 401) http++; else accepted++;
    } catch { errors++; }
  }
}

function socketOnce() {
  return new Promise((done) => {
    const socket = io(base, { auth: { token: forged }, transports: ["websocket"], reconnection: false, forceNew: true });
    socket.on("connect", () => { accepted++; socket.close(); done(); });
    socket.on("connect_error", () => { sockets++; socket.close(); done(); });
  });
}

async function socketLoop() {
  while (Date.now() < until) await socketOnce();
}

const started = Date.now();
await Promise.all(Array.from({ length: concurrency }, (_, i) => (i % 2 ? socketLoop() : httpLoop())));
const elapsed = (Date.now() - started) / 1000;
console.log(JSON.stringify({
  seconds: Math.round(elapsed * 10) / 10,
  http_refused_per_s: Math.round(http / elapsed),
  socket_refused_per_s: Math.round(sockets / elapsed),
  refused: http + sockets, accepted, errors,
}));
