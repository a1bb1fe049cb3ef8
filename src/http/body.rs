//! The three ways an image arrives on the same route: a multipart upload (field `image`), a raw
//! body with an image content type, or JSON naming a URL that the server fetches. Options come
//! from the query string and, for multipart and JSON, from the body too (the body wins).

use super::AppState;
use super::options::RawOptions;
use super::problem::ApiError;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header;
use http_body_util::BodyExt;
use std::time::{Duration, Instant};

/// Content types accepted as a raw image body. The format itself is told by magic bytes.
pub const RAW_IMAGE_TYPES: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/webp",
    "image/gif",
    "image/bmp",
    "image/tiff",
    "application/octet-stream",
];

const ALLOWED_TYPES: &str = "multipart/form-data (field \"image\"), application/json ({\"url\": ...}), or a raw \
                             image body (image/jpeg, image/png, image/webp, image/gif, image/bmp, image/tiff, \
                             application/octet-stream)";

/// An image's bytes, the options that came with it, and how long fetching took (URL form).
pub struct Incoming {
    pub bytes: Bytes,
    pub options: RawOptions,
    pub fetch: Option<Duration>,
}

pub async fn read(state: &AppState, req: Request) -> Result<Incoming, ApiError> {
    let mut options = RawOptions(query_pairs(req.uri().query())?);
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_string();
    let limit = state.config.body_limit;
    if let Some(len) = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        && len > limit as u64
    {
        return Err(ApiError::BodyTooLarge { limit });
    }
    let timeout = state.config.body_read_timeout();
    // The body read has its own deadline, apart from the whole request's: a client that sends
    // its headers and then stalls or trickles the body is cut off early.
    match essence.as_str() {
        "multipart/form-data" => {
            let image = within(timeout, async {
                let mut multipart = Multipart::from_request(req, &())
                    .await
                    .map_err(|e| ApiError::Malformed(e.body_text()))?;
                let mut image = None;
                while let Some(field) = multipart
                    .next_field()
                    .await
                    .map_err(|e| multipart_error(e, limit))?
                {
                    let name = field.name().unwrap_or("").to_string();
                    if name == "image" {
                        image = Some(field.bytes().await.map_err(|e| multipart_error(e, limit))?);
                    } else {
                        let value = field.text().await.map_err(|e| multipart_error(e, limit))?;
                        options.0.push((name, value));
                    }
                }
                Ok(image)
            })
            .await?;
            let bytes = image.ok_or_else(|| {
                ApiError::Malformed("the multipart form has no field \"image\"".into())
            })?;
            Ok(Incoming {
                bytes,
                options,
                fetch: None,
            })
        }
        "application/json" => {
            let body = within(timeout, collect(req.into_body(), limit)).await?;
            let doc: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
                .map_err(|e| ApiError::Malformed(format!("the body is not a JSON object: {e}")))?;
            let mut url = None;
            for (k, v) in doc {
                let text = match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Number(n) => n.to_string(),
                    serde_json::Value::Bool(b) => b.to_string(),
                    other => {
                        return Err(ApiError::InvalidOption(format!(
                            "{k} must be a string, number or boolean, not {other}"
                        )));
                    }
                };
                if k == "url" {
                    url = Some(text)
                } else {
                    options.0.push((k, text))
                }
            }
            let url = url
                .ok_or_else(|| ApiError::Malformed("the JSON body has no \"url\" member".into()))?;
            let started = Instant::now();
            let bytes = state.fetcher.fetch(&url).await?;
            Ok(Incoming {
                bytes,
                options,
                fetch: Some(started.elapsed()),
            })
        }
        t if RAW_IMAGE_TYPES.contains(&t) => {
            let bytes = within(timeout, collect(req.into_body(), limit)).await?;
            Ok(Incoming {
                bytes,
                options,
                fetch: None,
            })
        }
        "" => Err(ApiError::UnsupportedMediaType(format!(
            "the request has no Content-Type; send {ALLOWED_TYPES}"
        ))),
        t => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {t:?} is not supported; send {ALLOWED_TYPES}"
        ))),
    }
}

fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let Some(q) = query else {
        return Ok(Vec::new());
    };
    serde_urlencoded_pairs(q)
}

/// Decodes `a=1&b=x%20y` into pairs; malformed percent-encoding is a 400.
fn serde_urlencoded_pairs(q: &str) -> Result<Vec<(String, String)>, ApiError> {
    axum::extract::Query::<Vec<(String, String)>>::try_from_uri(
        &format!("/?{q}")
            .parse()
            .map_err(|_| ApiError::Malformed("the query string is not valid".into()))?,
    )
    .map(|axum::extract::Query(v)| v)
    .map_err(|e| ApiError::Malformed(format!("the query string is not valid: {e}")))
}

/// Runs a body read under the body-read timeout.
async fn within<T>(
    timeout: Duration,
    read: impl Future<Output = Result<T, ApiError>>,
) -> Result<T, ApiError> {
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or(Err(ApiError::BodyTimeout(timeout.as_millis() as u64)))
}

/// Reads a whole body, refusing it as soon as it passes `limit` (whatever Content-Length said).
async fn collect(body: Body, limit: usize) -> Result<Bytes, ApiError> {
    match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e)
            if e.downcast_ref::<http_body_util::LengthLimitError>()
                .is_some() =>
        {
            Err(ApiError::BodyTooLarge { limit })
        }
        Err(e) => Err(ApiError::Malformed(format!(
            "the request body could not be read: {e}"
        ))),
    }
}

fn multipart_error(e: axum::extract::multipart::MultipartError, limit: usize) -> ApiError {
    if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::BodyTooLarge { limit }
    } else {
        ApiError::Malformed(format!(
            "the multipart form could not be read: {}",
            e.body_text()
        ))
    }
}
