//! A raw Socket.IO v5 client over one WebSocket (tokio-tungstenite): for
//! the clients socket.io-client would never be — ones that stop reading,
//! hang up mid-handshake, flood, or send what the protocol forbids.

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::{Daemon, WAIT};

/// A raw Socket.IO v5 client over one WebSocket: for clients that
/// misbehave in ways socket.io-client never would.
pub struct RawSocket {
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
}

impl RawSocket {
    /// Opens the Engine.IO session (waits for its OPEN packet) over a TCP
    /// connection whose receive buffer is `recv_buffer` bytes, if given.
    pub async fn open(daemon: &Daemon, recv_buffer: Option<u32>) -> Self {
        let authority = daemon.url.strip_prefix("http://").expect("plain http");
        let addr: std::net::SocketAddr = authority.parse().expect("host:port");
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        if let Some(size) = recv_buffer {
            socket.set_recv_buffer_size(size).unwrap();
        }
        let stream = socket.connect(addr).await.expect("tcp connect");
        Self::handshake(daemon, stream, &[])
            .await
            .expect("websocket handshake")
    }

    /// Opens the Engine.IO session from the local address `source` (any
    /// 127.x.y.z is this host), sending `headers` with the handshake; the
    /// handshake's refusal (e.g. an HTTP 429) as the error.
    pub async fn open_from(
        daemon: &Daemon,
        source: std::net::IpAddr,
        headers: &[(&str, &str)],
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let authority = daemon.url.strip_prefix("http://").expect("plain http");
        let addr: std::net::SocketAddr = authority.parse().expect("host:port");
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket
            .bind(std::net::SocketAddr::new(source, 0))
            .expect("bind the source address");
        let stream = socket.connect(addr).await.expect("tcp connect");
        Self::handshake(daemon, stream, headers).await
    }

    async fn handshake(
        daemon: &Daemon,
        stream: tokio::net::TcpStream,
        headers: &[(&str, &str)],
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let authority = daemon.url.strip_prefix("http://").expect("plain http");
        let url = format!("ws://{authority}/socket.io/?EIO=4&transport=websocket");
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request.headers_mut().insert(
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .expect("header name"),
                value.parse().expect("header value"),
            );
        }
        let (ws, _) = tokio_tungstenite::client_async(request, stream).await?;
        let mut raw = Self { ws };
        let open = raw.next_text().await.expect("engine.io OPEN");
        assert!(open.starts_with('0'), "{open}");
        Ok(raw)
    }

    /// Closes the WebSocket (and so the Engine.IO session).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }

    pub async fn send(&mut self, text: String) {
        self.try_send(text).await.expect("ws send");
    }

    pub async fn try_send(
        &mut self,
        text: String,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(Message::text(text)).await
    }

    /// The next text frame, answering Engine.IO pings; `None` once closed.
    pub async fn next_text(&mut self) -> Option<String> {
        loop {
            match tokio::time::timeout(WAIT, self.ws.next()).await {
                Ok(Some(Ok(Message::Text(text)))) if text.as_str() == "2" => {
                    let _ = self.ws.send(Message::text("3")).await;
                }
                Ok(Some(Ok(Message::Text(text)))) => return Some(text.to_string()),
                Ok(Some(Ok(Message::Close(_)) | Err(_)) | None) => return None,
                Ok(Some(Ok(_))) => {}
                Err(_) => panic!("nothing from the daemon within {WAIT:?}"),
            }
        }
    }

    /// Sends CONNECT with `token` and waits for the answer packet.
    pub async fn connect(&mut self, token: &str) -> String {
        self.send(format!("40{}", json!({ "token": token }))).await;
        loop {
            let packet = self.next_text().await.expect("connect answer");
            if packet.starts_with("40") || packet.starts_with("44") {
                return packet;
            }
        }
    }
}
