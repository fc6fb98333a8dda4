// Drives real socket.io-client sockets for the Rust integration tests.
// Reads one JSON command per line on stdin, writes one JSON message per line
// on stdout. Commands:
//   {op:"connect", name, url, options, early, onConnect}
//                                            -> {type:"connect", name, id} | {type:"connect_error", name, message}
//     early:     [{event, args, req}] emitted with an ack right after io(), before
//                the CONNECT arrives: socket.io-client buffers them and flushes them
//                the moment it is connected (what a viewer clicked during a blip).
//     onConnect: [{method, url, token, body, req}] HTTP requests started inside the
//                `connect` listener, before anything else runs -> {type:"http", req, status, body}
//   {op:"emit", name, event, args, ack, req} -> {type:"ack", req, value} when ack
//   {op:"close", name}                       -> {type:"closed", name}
// Every event a socket receives:              {type:"event", name, event, args}
// Every disconnect:                           {type:"disconnect", name, reason}
import { io } from "socket.io-client";
import { createInterface } from "node:readline";
import tls from "node:tls";

const sockets = new Map();
const out = (msg) => process.stdout.write(JSON.stringify(msg) + "\n");

function connect({ name, url, options, early = [], onConnect = [] }) {
  const socket = io(url, {
    forceNew: true,
    reconnection: false,
    transports: ["websocket"],
    ...options,
  });
  sockets.set(name, socket);
  for (const { event, args, req } of early) emit({ name, event, args, ack: true, req });
  socket.on("connect", () => {
    for (const request of onConnect) http(request);
    out({ type: "connect", name, id: socket.id });
  });
  socket.on("connect_error", (err) => out({ type: "connect_error", name, message: err.message }));
  socket.on("disconnect", (reason) => out({ type: "disconnect", name, reason }));
  socket.onAny((event, ...args) => out({ type: "event", name, event, args }));
}

function emit({ name, event, args, ack, req }) {
  const socket = sockets.get(name);
  if (!socket) return out({ type: "ack", req, error: `no socket ${name}` });
  if (ack) {
    socket.timeout(10000).emit(event, ...args, (err, value) => {
      if (err) out({ type: "ack", req, error: String(err) });
      else out({ type: "ack", req, value });
    });
  } else {
    socket.emit(event, ...args);
  }
}

async function http({ method, url, token, body, req }) {
  try {
    const response = await fetch(url, {
      method,
      headers: { authorization: `Bearer ${token}`, "content-type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await response.text();
    let parsed;
    try { parsed = JSON.parse(text); } catch { parsed = text; }
    out({ type: "http", req, status: response.status, body: parsed });
  } catch (err) {
    out({ type: "http", req, error: String(err) });
  }
}

const lines = createInterface({ input: process.stdin });
lines.on("line", (line) => {
  const cmd = JSON.parse(line);
  if (cmd.op === "connect") connect(cmd);
  else if (cmd.op === "emit") emit(cmd);
  else if (cmd.op === "peer_cert") {
    // The certificate a new TLS handshake sees.
    const conn = tls.connect({ host: cmd.host, port: cmd.port, ca: cmd.ca, servername: "localhost" }, () => {
      out({ type: "peer_cert", req: cmd.req, fingerprint: conn.getPeerCertificate().fingerprint256 });
      conn.end();
    });
    conn.on("error", (err) => out({ type: "peer_cert", req: cmd.req, error: err.message }));
  }
  else if (cmd.op === "close") {
    sockets.get(cmd.name)?.close();
    sockets.delete(cmd.name);
    out({ type: "closed", name: cmd.name });
  }
});
lines.on("close", () => {
  for (const socket of sockets.values()) socket.close();
  process.exit(0);
});
