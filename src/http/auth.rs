//! API keys: off unless keys are configured; then the configured routes need
//! `Authorization: Bearer KEY`. Keys are compared in constant time (as SHA-256 digests, so that
//! neither a key's content nor its length shows in the time taken) and never logged.

use super::AppState;
use super::problem::{ApiError, AuthFailure};
use axum::extract::{MatchedPath, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The configured keys (as digests) and the routes that need one.
#[derive(Clone, Default)]
pub struct ApiKeys {
    digests: Vec<[u8; 32]>,
    paths: Vec<String>,
    /// The keys could not be read: every guarded route refuses (never open by accident).
    deny_all: bool,
}

fn digest(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

impl ApiKeys {
    pub fn new(keys: Result<Vec<String>, String>, paths: &[String]) -> Self {
        let (digests, deny_all) = match keys {
            Ok(keys) => (keys.iter().map(|k| digest(k.as_bytes())).collect(), false),
            Err(_) => (Vec::new(), true),
        };
        Self {
            digests,
            paths: paths.to_vec(),
            deny_all,
        }
    }

    /// Whether a request to `route` must carry a key.
    pub(in crate::http) fn guards(&self, route: &str) -> bool {
        // The inference protocols' routes go by their protocol's name (see KEYED_PATHS_ALLOWED).
        let named = match route {
            r if r.starts_with("/v1/") => "/v1",
            r if r.starts_with("/v2/models") => "/v2",
            // The protocol's health and server metadata stay open to probes.
            r if r == "/v2" || r.starts_with("/v2/") => return false,
            r => r,
        };
        (self.deny_all || !self.digests.is_empty()) && self.paths.iter().any(|p| p == named)
    }

    /// Checks an `Authorization` header's value against every key, in constant time.
    pub(in crate::http) fn check(&self, authorization: Option<&[u8]>) -> Result<(), AuthFailure> {
        let value = authorization.ok_or(AuthFailure::Missing)?;
        let token = value
            .split(|b| *b == b' ')
            .filter(|part| !part.is_empty())
            .collect::<Vec<_>>();
        let [scheme, token] = token.as_slice() else {
            return Err(AuthFailure::Malformed);
        };
        if !scheme.eq_ignore_ascii_case(b"bearer") {
            return Err(AuthFailure::Malformed);
        }
        let presented = digest(token);
        let matched = self
            .digests
            .iter()
            .fold(subtle::Choice::from(0), |any, d| any | d.ct_eq(&presented));
        if bool::from(matched) {
            Ok(())
        } else {
            Err(AuthFailure::Invalid)
        }
    }
}

/// Route middleware: refuses a guarded route without a valid key with 401, counted by reason.
pub async fn guard(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str());
    if route.is_some_and(|r| state.keys.guards(r)) {
        let header = req
            .headers()
            .get(header::AUTHORIZATION)
            .map(|v| v.as_bytes());
        if let Err(failure) = state.keys.check(header) {
            state.metrics.auth_failure(failure.reason());
            // The body is left unread: close the connection after the answer rather than leave
            // the rest of an upload in the way of the next request on it.
            let mut res = ApiError::Unauthorized(failure).into_response();
            res.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
            return res;
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(list: &[&str]) -> ApiKeys {
        ApiKeys::new(
            Ok(list.iter().map(|k| k.to_string()).collect()),
            &["/explain".to_string()],
        )
    }

    #[test]
    fn bearer_tokens_are_checked_against_every_key() {
        let k = keys(&["first", "second"]);
        assert!(k.guards("/explain") && !k.guards("/metrics"));
        for ok in ["Bearer first", "bearer second", "Bearer  second"] {
            assert_eq!(k.check(Some(ok.as_bytes())), Ok(()), "{ok}");
        }
        let cases: [(Option<&str>, AuthFailure); 6] = [
            (None, AuthFailure::Missing),
            (Some("first"), AuthFailure::Malformed),
            (Some("Basic Zmlyc3Q="), AuthFailure::Malformed),
            (Some("Bearer first second"), AuthFailure::Malformed),
            (Some("Bearer firs"), AuthFailure::Invalid),
            (Some("Bearer first2"), AuthFailure::Invalid),
        ];
        for (header, want) in cases {
            assert_eq!(k.check(header.map(str::as_bytes)), Err(want), "{header:?}");
        }
    }

    #[test]
    fn no_keys_guard_nothing_and_unreadable_keys_guard_everything_named() {
        assert!(!keys(&[]).guards("/explain"));
        let broken = ApiKeys::new(Err("unreadable".into()), &["/explain".to_string()]);
        assert!(broken.guards("/explain"));
        assert_eq!(
            broken.check(Some(b"Bearer anything")),
            Err(AuthFailure::Invalid)
        );
    }
}
