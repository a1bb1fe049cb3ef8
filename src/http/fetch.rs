//! Fetching an image named by URL: http and https only, no credentials, no proxy from the
//! environment, no transparent decompression, a bounded number of redirects, connect and total
//! timeouts, and a byte cap enforced while reading.

use super::problem::{ApiError, FetchError};
use axum::body::Bytes;
use std::time::Duration;

pub const MAX_REDIRECTS: usize = 3;

#[derive(Debug, Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    max_bytes: u64,
}

impl Fetcher {
    pub fn new(timeout: Duration, max_bytes: u64) -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(reqwest::redirect::Policy::limited(MAX_REDIRECTS))
            .connect_timeout(timeout.min(Duration::from_secs(5)))
            .timeout(timeout)
            .user_agent(concat!("gradcam-serve/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client with static settings builds: this is a bug");
        Self { client, max_bytes }
    }

    pub async fn fetch(&self, url: &str) -> Result<Bytes, ApiError> {
        let parsed = validate_url(url)?;
        let mut response = self.client.get(parsed).send().await.map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            return Err(ApiError::Fetch(FetchError::Upstream(status.as_u16())));
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes)
        {
            return Err(ApiError::Fetch(FetchError::TooLarge(self.max_bytes)));
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(classify)? {
            if body.len() as u64 + chunk.len() as u64 > self.max_bytes {
                return Err(ApiError::Fetch(FetchError::TooLarge(self.max_bytes)));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Bytes::from(body))
    }
}

/// Only absolute http(s) URLs with a host and without credentials.
pub fn validate_url(url: &str) -> Result<reqwest::Url, ApiError> {
    let invalid = |why: &str| {
        ApiError::InvalidUrl(format!("{why}; send an absolute http:// or https:// URL"))
    };
    let parsed = reqwest::Url::parse(url.trim())
        .map_err(|e| invalid(&format!("the URL is not valid ({e})")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(invalid(&format!(
            "the scheme {:?} is not allowed",
            parsed.scheme()
        )));
    }
    if parsed.host().is_none() {
        return Err(invalid("the URL has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(invalid("credentials in the URL are not allowed"));
    }
    Ok(parsed)
}

fn classify(e: reqwest::Error) -> ApiError {
    if e.is_timeout() {
        ApiError::Fetch(FetchError::Timeout)
    } else if e.is_redirect() {
        ApiError::Fetch(FetchError::Forbidden(format!(
            "more than {MAX_REDIRECTS} redirects"
        )))
    } else {
        ApiError::Fetch(FetchError::Unreachable)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_http_and_https_without_credentials() {
        assert!(validate_url("https://example.com/cat.jpg").is_ok());
        for bad in [
            "file:///etc/passwd",
            "ftp://example.com/a.jpg",
            "http://user:pw@example.com/",
            "not a url",
            "/cat.jpg",
        ] {
            assert!(
                matches!(validate_url(bad), Err(ApiError::InvalidUrl(_))),
                "{bad}"
            );
        }
    }
}
