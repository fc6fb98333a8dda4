// The benchmark peer: a socket.io 4 server in the style of the Node.js
// websocket services readback replaces. State is in memory (nothing is
// durable), which is the comparison the benchmark makes.
// Usage: node server.mjs SECRET  -> prints "peer listening on http://127.0.0.1:PORT"
import http from "node:http";
import { Server } from "socket.io";
import jwt from "jsonwebtoken";

const secret = process.argv[2];
const pending = new Map(); // userId -> Map(id -> notification)
const acknowledged = new Set(); // ids

const server = http.createServer((req, res) => {
  const lookup = req.method === "GET" && req.url.match(/^\/api\/v1\/notifications\/([^/]+)$/);
  if (lookup) {
    const state = acknowledged.has(lookup[1]) ? "acknowledged" : "pending";
    res.writeHead(200, { "content-type": "application/json" }).end(JSON.stringify({ id: lookup[1], state }));
    return;
  }
  if (req.method !== "POST" || req.url !== "/api/v1/notifications") {
    res.writeHead(404).end();
    return;
  }
  let body = "";
  req.on("data", (chunk) => (body += chunk));
  req.on("end", () => {
    try {
      jwt.verify((req.headers.authorization ?? "").replace("Bearer ", ""), secret, { algorithms: ["HS256"] });
      const raise = JSON.parse(body);
      const userId = raise.recipient.userId;
      const notification = {
        id: raise.id, type: "critical_finding", severity: raise.severity, title: raise.title,
        createdAt: new Date().toISOString(), replayed: false,
      };
      if (!pending.has(userId)) pending.set(userId, new Map());
      pending.get(userId).set(notification.id, notification);
      io.to(`user:${userId}`).emit("critical_notification", notification);
      res.writeHead(201, { "content-type": "application/json" }).end(JSON.stringify(notification));
    } catch (e) {
      res.writeHead(400).end(String(e));
    }
  });
});

const io = new Server(server, { transports: ["websocket", "polling"] });
io.use((socket, next) => {
  try {
    socket.data.user = jwt.verify(socket.handshake.auth?.token ?? "", secret, { algorithms: ["HS256"] });
    next();
  } catch {
    next(new Error("Invalid authentication token"));
  }
});
io.on("connection", (socket) => {
  const userId = socket.data.user.sub;
  socket.join(`user:${userId}`);
  socket.emit("connected", { socketId: socket.id, userId });
  for (const notification of pending.get(userId)?.values() ?? []) {
    socket.emit("critical_notification", { ...notification, replayed: true });
  }
  socket.on("acknowledge_notification", (data, ack) => {
    if (pending.get(userId)?.delete(data?.notificationId)) acknowledged.add(data.notificationId);
    if (typeof ack === "function") ack({ ok: true, notificationId: data?.notificationId });
  });
});

server.listen(0, "127.0.0.1", () => {
  console.log(`peer listening on http://127.0.0.1:${server.address().port}`);
});
