//! Requests to the server.

use std::time::Duration;

/// The server under test: a client and its base URL (cheap to clone).
#[derive(Clone)]
pub struct Target {
    client: reqwest::Client,
    base: String,
}

/// What the server answered.
pub struct Answer {
    pub status: u16,
    pub retry_after: Option<String>,
    pub body: bytes::Bytes,
}

impl Target {
    pub fn new(base: String) -> Self {
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .no_proxy()
            .build()
            .expect("an HTTP client with default TLS settings");
        Target { client, base }
    }

    /// Posts `body` to `path`; an error describes a transport failure or an unread body.
    pub async fn post(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
    ) -> Result<Answer, String> {
        let res = self
            .client
            .post(format!("{}{path}", self.base))
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .map_err(|e| format!("transport: {e}"))?;
        let status = res.status().as_u16();
        let retry_after = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = res.bytes().await.map_err(|e| format!("body: {e}"))?;
        Ok(Answer {
            status,
            retry_after,
            body,
        })
    }

    /// Posts the photo to `/explain`, as every good request does.
    pub async fn explain(&self, photo: &[u8]) -> Result<Answer, String> {
        self.post("/explain", "image/jpeg", photo.to_vec()).await
    }

    /// The status of `/health/ready`; 0 when the server does not answer.
    pub async fn ready_status(&self) -> u16 {
        self.client
            .get(format!("{}/health/ready", self.base))
            .send()
            .await
            .map_or(0, |r| r.status().as_u16())
    }
}
