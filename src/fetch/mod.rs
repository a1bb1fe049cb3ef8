//! Fetching an image named by URL without letting the URL reach into our own network (SSRF).
//!
//! - Only absolute `http`/`https` URLs, no credentials, only allowed ports (80 and 443 unless
//!   configured).
//! - The host is taken from the WHATWG-parsed URL, so every textual form of an IPv4 address
//!   (decimal, octal, hex, shortened, percent-encoded) is classified as the address it denotes.
//! - IP literals are checked here, before any connection (reqwest's connector does not ask a
//!   resolver for them). Names are resolved once by [`CheckingResolver`], which refuses the name
//!   if any answer is forbidden and hands the connector exactly the addresses it checked: no
//!   second lookup, so DNS rebinding gains nothing.
//! - Every redirect hop is checked the same way; at most [`MAX_REDIRECTS`].
//! - No proxy from the environment, no transparent decompression, connect and total timeouts,
//!   and a byte cap enforced while reading. Refusals never repeat what the source answered.

pub mod addr;

use addr::AddressPolicy;
use bytes::Bytes;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

pub const MAX_REDIRECTS: usize = 3;

/// Why an image URL could not be fetched. The detail never includes what the source answered.
/// The HTTP layer maps each variant to its answer; nothing here knows about status codes.
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum FetchError {
    /// Not an absolute http(s) URL with a host and without credentials.
    #[error("{0}; send an absolute http:// or https:// URL")]
    InvalidUrl(String),
    #[error("the source is not allowed: {0}")]
    Forbidden(String),
    #[error("the source could not be reached")]
    Unreachable,
    #[error("the source did not answer in time")]
    Timeout,
    #[error("the image at the source is larger than the limit of {0} bytes")]
    TooLarge(u64),
    #[error("the source answered HTTP {0}")]
    Upstream(u16),
}

/// Resolves a host name to addresses (port 0). The production one asks the system resolver;
/// tests substitute their own.
pub type Lookup = Arc<
    dyn Fn(String) -> Pin<Box<dyn Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>
        + Send
        + Sync,
>;

/// The system resolver.
pub fn system_lookup() -> Lookup {
    Arc::new(|host: String| {
        Box::pin(async move {
            Ok(tokio::net::lookup_host((host.as_str(), 0))
                .await?
                .map(|a| a.ip())
                .collect())
        })
    })
}

/// A refusal raised inside reqwest (resolver or redirect policy), found again by [`classify`].
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Refused(String);

/// reqwest's resolver hook: resolve once, check every answer, return only checked addresses.
struct CheckingResolver {
    lookup: Lookup,
    policy: Arc<AddressPolicy>,
}

impl reqwest::dns::Resolve for CheckingResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let host = name.as_str().to_string();
        let (lookup, policy) = (self.lookup.clone(), self.policy.clone());
        Box::pin(async move {
            let ips = lookup(host.clone()).await?;
            if ips.is_empty() {
                return Err(std::io::Error::other(format!("{host} has no address")).into());
            }
            for ip in &ips {
                policy.check(*ip).map_err(|why| {
                    Refused(format!("{host} resolves to a forbidden address ({why})"))
                })?;
            }
            let addrs: reqwest::dns::Addrs =
                Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// Settings of the fetcher.
#[derive(Debug, Clone)]
pub struct FetchConfig {
    pub timeout: Duration,
    pub max_bytes: u64,
    pub allowed_ports: Vec<u16>,
    pub policy: AddressPolicy,
}

#[derive(Clone)]
pub struct Fetcher {
    client: reqwest::Client,
    max_bytes: u64,
    rules: Arc<Rules>,
}

/// What every URL (first and redirected) must satisfy before a connection.
struct Rules {
    ports: Vec<u16>,
    policy: Arc<AddressPolicy>,
}

impl Rules {
    /// Scheme, credentials, port and (for IP literals) address.
    fn check(&self, url: &reqwest::Url) -> Result<(), FetchError> {
        validate_url(url.as_str())?;
        let port = url.port_or_known_default().unwrap_or(0);
        if !self.ports.contains(&port) {
            let allowed: Vec<String> = self.ports.iter().map(u16::to_string).collect();
            return Err(FetchError::Forbidden(format!(
                "port {port} is not allowed; allowed: {}",
                allowed.join(", ")
            )));
        }
        let literal = match url.host() {
            Some(url::Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
            Some(url::Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
            _ => None,
        };
        if let Some(ip) = literal {
            self.policy.check(ip).map_err(FetchError::Forbidden)?;
        }
        Ok(())
    }
}

impl Fetcher {
    pub fn new(config: FetchConfig) -> Self {
        Self::with_lookup(config, system_lookup())
    }

    /// A fetcher with its own name resolution (tests use a stub resolver).
    pub fn with_lookup(config: FetchConfig, lookup: Lookup) -> Self {
        let policy = Arc::new(config.policy);
        let rules = Arc::new(Rules {
            ports: config.allowed_ports,
            policy: policy.clone(),
        });
        let redirect_rules = rules.clone();
        let redirect = reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() > MAX_REDIRECTS {
                return attempt.error(Refused(format!("more than {MAX_REDIRECTS} redirects")));
            }
            match redirect_rules.check(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(e) => attempt.error(Refused(format!("a redirect led to a refused URL: {e}"))),
            }
        });
        let client = reqwest::Client::builder()
            .no_proxy()
            .redirect(redirect)
            .dns_resolver(Arc::new(CheckingResolver { lookup, policy }))
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .read_timeout(config.timeout)
            .timeout(config.timeout)
            .user_agent(concat!("gradcam-serve/", env!("CARGO_PKG_VERSION")))
            .build()
            .expect("a client with static settings builds: this is a bug");
        Self {
            client,
            max_bytes: config.max_bytes,
            rules,
        }
    }

    /// Fetches the whole body.
    pub async fn fetch(&self, url: &str) -> Result<Bytes, FetchError> {
        let mut download = self.start(url).await?;
        while download.next().await?.is_some() {}
        Ok(download.into_bytes())
    }

    /// Checks the URL, connects and reads the response's head; the body then comes chunk by
    /// chunk from [`Download::next`], so that a caller can account for memory as it grows.
    pub async fn start(&self, url: &str) -> Result<Download, FetchError> {
        let parsed = validate_url(url)?;
        self.rules.check(&parsed)?;
        let response = self.client.get(parsed).send().await.map_err(classify)?;
        let status = response.status();
        if !status.is_success() {
            return Err(FetchError::Upstream(status.as_u16()));
        }
        if response
            .content_length()
            .is_some_and(|n| n > self.max_bytes)
        {
            return Err(FetchError::TooLarge(self.max_bytes));
        }
        // An announced length (at most the limit) is allocated once; growing by doubling
        // could hold up to twice what arrived.
        let capacity = response.content_length().unwrap_or(0).min(self.max_bytes);
        Ok(Download {
            response,
            max_bytes: self.max_bytes,
            body: Vec::with_capacity(usize::try_from(capacity).unwrap_or(0)),
        })
    }
}

/// A response whose body is being read, never beyond the fetcher's size limit.
pub struct Download {
    response: reqwest::Response,
    max_bytes: u64,
    body: Vec<u8>,
}

impl Download {
    /// The body's length as the server announced it, if it did (never above the limit).
    pub fn announced_len(&self) -> Option<u64> {
        self.response.content_length()
    }

    /// Reads the next chunk; returns the number of bytes received so far, or `None` at the end.
    pub async fn next(&mut self) -> Result<Option<u64>, FetchError> {
        let Some(chunk) = self.response.chunk().await.map_err(classify)? else {
            return Ok(None);
        };
        if self.body.len() as u64 + chunk.len() as u64 > self.max_bytes {
            return Err(FetchError::TooLarge(self.max_bytes));
        }
        self.body.extend_from_slice(&chunk);
        Ok(Some(self.body.len() as u64))
    }

    /// The body, holding no more memory than its length.
    pub fn into_bytes(mut self) -> Bytes {
        self.body.shrink_to_fit();
        Bytes::from(self.body)
    }
}

/// Only absolute http(s) URLs with a host and without credentials.
pub fn validate_url(url: &str) -> Result<reqwest::Url, FetchError> {
    let invalid = |why: &str| FetchError::InvalidUrl(why.to_string());
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

fn classify(e: reqwest::Error) -> FetchError {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if let Some(r) = s.downcast_ref::<Refused>() {
            return FetchError::Forbidden(r.0.clone());
        }
        source = s.source();
    }
    if e.is_timeout() {
        FetchError::Timeout
    } else {
        FetchError::Unreachable
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
                matches!(validate_url(bad), Err(FetchError::InvalidUrl(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn every_textual_form_of_an_address_is_classified_as_that_address() {
        let rules = Rules {
            ports: vec![80, 443],
            policy: Arc::new(AddressPolicy::default()),
        };
        for url in [
            "http://127.0.0.1/",
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://0x7f.1/",
            "http://%31%32%37.0.0.1/",
            "http://[::1]/",
            "http://[::ffff:127.0.0.1]/",
            "http://[::ffff:7f00:1]/",
            "http://169.254.169.254/latest/meta-data/",
            "http://[fd00:ec2::254]/",
            "http://0/",
            "http://10.0.0.1:443/",
        ] {
            let parsed = validate_url(url).unwrap();
            match rules.check(&parsed) {
                Err(FetchError::Forbidden(_)) => {}
                other => panic!("{url}: {other:?}"),
            }
        }
        assert!(
            rules
                .check(&validate_url("http://93.184.216.34/").unwrap())
                .is_ok()
        );
        match rules.check(&validate_url("http://93.184.216.34:8080/").unwrap()) {
            Err(FetchError::Forbidden(m)) => {
                assert!(m.contains("port 8080"), "{m}")
            }
            other => panic!("{other:?}"),
        }
    }
}
