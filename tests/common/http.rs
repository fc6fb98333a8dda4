//! HTTP as the PACS and the admins use it: reqwest, with every reply read
//! into status, content type and JSON body (text when it is not JSON).

use serde_json::{Value, json};

use super::{Daemon, service_token};

/// HTTP helpers over reqwest.
#[derive(Clone)]
pub struct Http {
    client: reqwest::Client,
}

pub struct Reply {
    pub status: u16,
    pub content_type: String,
    pub body: Value,
}

impl Default for Http {
    fn default() -> Self {
        Self {
            client: reqwest::Client::new(),
        }
    }
}

impl Http {
    /// Requests from the local address `source` (any 127.x.y.z is this
    /// host), each on a new connection: for limits per client address.
    pub fn from_address(source: std::net::IpAddr) -> Self {
        Self {
            client: reqwest::Client::builder()
                .local_address(source)
                .pool_max_idle_per_host(0)
                .build()
                .expect("http client"),
        }
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("http request");
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Reply {
            status,
            content_type,
            body,
        }
    }

    pub async fn get(&self, url: &str, token: &str) -> Reply {
        self.send(self.client.get(url).bearer_auth(token)).await
    }

    pub async fn post(&self, url: &str, token: &str, body: &Value) -> Reply {
        self.send(self.client.post(url).bearer_auth(token).json(body))
            .await
    }

    pub async fn delete(&self, url: &str, token: &str) -> Reply {
        self.send(self.client.delete(url).bearer_auth(token)).await
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Raises a critical notification with a patient and a study; the
    /// stored body.
    pub async fn raise(&self, daemon: &Daemon, recipient: Value, title: &str) -> Value {
        self.raise_with(
            daemon,
            &json!({
                "recipient": recipient,
                "severity": "critical",
                "title": title,
                "patientId": "patient-789",
                "studyId": "study-012",
            }),
        )
        .await
    }

    /// Raises `body` as the PACS, which must be answered `201`; the stored
    /// body.
    pub async fn raise_with(&self, daemon: &Daemon, body: &Value) -> Value {
        let reply = self
            .post(&daemon.api("/notifications"), &service_token(), body)
            .await;
        assert_eq!(reply.status, 201, "raise failed: {}", reply.body);
        reply.body
    }
}
