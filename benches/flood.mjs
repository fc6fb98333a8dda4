// An unauthenticated flood: forged tokens as fast as CONCURRENCY loops can
// send them, for SECONDS. Half the loops POST raises with a forged token and
// an attacker-sized User-Agent (8 KiB); the other half open Socket.IO
// connections (WebSocket) with a forged token. Every request must be
// refused. Prints one JSON line: refusals per second by kind.
// The flood comes from ADDRESSES client addresses from 127.0.0.2 on (loop i
// from the (i mod ADDRESSES)-th), other addresses than the measured PACS and
// viewer on 127.0.0.1, as attackers on the network would: readback's
// per-address caps and budgets apply to them, not to the measured clients.
// Usage: node benches/flood.mjs BASE_URL SECONDS CONCURRENCY [ADDRESSES]
import http from "node:http";
import { createRequire } from "node:module";

const require = createRequire(new URL("../tests/js/package.json", import.meta.url));
const { io } = require("socket.io-client");

const [base, secondsArg, concurrencyArg, addressesArg] = process.argv.slice(2);
const seconds = Number(secondsArg ?? 20);
const concurrency = Number(concurrencyArg ?? 32);
const addresses = Number(addressesArg ?? 1);
const until = Date.now() + seconds * 1000;

// A token in shape, signed with a key readback does not know.
const b64 = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
const forged = `${b64({ alg: "HS256", typ: "JWT" })}.${b64({ sub: "mallory", roles: ["service"], exp: 4102444800 })}.${"A".repeat(43)}`;
const userAgent = "flood/" + "x".repeat(8192);

const addressOf = (loop) => `127.0.0.${2 + (loop % addresses)}`;
const agents = new Map();
const agentOf = (localAddress) => {
  if (!agents.has(localAddress)) agents.set(localAddress, new http.Agent({ keepAlive: true, localAddress }));
  return agents.get(localAddress);
};
let refusedHttp = 0, sockets = 0, capped = 0, cappedHttp = 0, accepted = 0, errors = 0;

function post(body, agent) {
  return new Promise((resolve) => {
    const request = http.request(`${base}/api/v1/notifications`, {
      method: "POST", agent,
      headers: { authorization: `Bearer ${forged}`, "content-type": "application/json", "user-agent": userAgent },
    }, (response) => { response.resume(); response.on("end", () => resolve(response.statusCode)); });
    request.on("error", () => resolve(0));
    request.end(body);
  });
}

async function httpLoop(localAddress) {
  const body = JSON.stringify({ recipient: { userId: "victim" }, severity: "critical", title: "forged" });
  const agent = agentOf(localAddress);
  while (Date.now() < until) {
    const status = await post(body, agent);
    if (status === 401) refusedHttp++;
    else if (status === 429) { capped++; cappedHttp++; }
    else if (status === 0) errors++;
    else accepted++;
  }
}

function socketOnce(localAddress) {
  return new Promise((done) => {
    const socket = io(base, {
      auth: { token: forged }, transports: ["websocket"], reconnection: false, forceNew: true, localAddress,
    });
    socket.io.on("error", () => {});
    socket.on("connect", () => { accepted++; socket.close(); done(); });
    socket.on("connect_error", (error) => {
      // A handshake over the per-address cap is refused before Socket.IO.
      if (String(error?.description?.message ?? error?.message).includes("429")) capped++; else sockets++;
      socket.close(); done();
    });
  });
}

async function socketLoop(localAddress) {
  while (Date.now() < until) await socketOnce(localAddress);
}

const started = Date.now();
await Promise.all(Array.from({ length: concurrency }, (_, i) => (i % 2 ? socketLoop(addressOf(i)) : httpLoop(addressOf(i)))));
const elapsed = (Date.now() - started) / 1000;
console.log(JSON.stringify({
  addresses,
  seconds: Math.round(elapsed * 10) / 10,
  http_refused_per_s: Math.round(refusedHttp / elapsed),
  socket_refused_per_s: Math.round(sockets / elapsed),
  capped_per_s: Math.round(capped / elapsed),
  capped_http_per_s: Math.round(cappedHttp / elapsed),
  refused: refusedHttp + sockets + capped, accepted, errors,
}));
