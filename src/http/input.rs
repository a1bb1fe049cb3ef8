//! The three ways an image arrives on the same route, one extractor each, chosen by the
//! request's content type: a multipart upload (field `image`), a raw body with an image content
//! type, or JSON naming a URL. Options come from the query string and, for multipart and JSON,
//! from the body too (the body wins). A URL is only named here: the handler fetches it after the
//! options have been checked.

use super::AppState;
use super::options::{RawOptions, Value};
use super::problem::ApiError;
use crate::input::SUPPORTED_MEDIA_TYPES;
use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Request};
use axum::http::header;
use http_body_util::BodyExt;

/// Media types accepted as a raw image body besides those of the supported formats. The format
/// itself is always told by magic bytes.
const OCTET_STREAM: &str = "application/octet-stream";

/// Where the image is.
pub enum Source {
    /// Uploaded with the request.
    Bytes(Bytes),
    /// To be fetched from this URL.
    Url(String),
}

/// An image source and the options that came with it.
pub struct Incoming {
    pub source: Source,
    pub options: RawOptions,
}

impl FromRequest<AppState> for Incoming {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let options = RawOptions(
            query_pairs(req.uri().query())?
                .into_iter()
                .map(|(k, v)| (k, Value::Text(v)))
                .collect(),
        );
        let essence = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let limit = state.config.body_limit;
        refuse_announced_excess(req.headers(), limit)?;
        // The body read has its own deadline, apart from the whole request's: a client that
        // sends its headers and then stalls or trickles the body is cut off early.
        let timeout = state.config.body_read_timeout();
        let read = async {
            match essence.as_str() {
                "multipart/form-data" => multipart_form(req, options, limit).await,
                "application/json" => json_form(req, options, limit).await,
                t if is_raw_image_type(t) => Ok(Incoming {
                    source: Source::Bytes(collect(req.into_body(), limit).await?),
                    options,
                }),
                "" => Err(ApiError::UnsupportedMediaType(format!(
                    "the request has no Content-Type; send {}",
                    allowed_types()
                ))),
                t => Err(ApiError::UnsupportedMediaType(format!(
                    "Content-Type {t:?} is not supported; send {}",
                    allowed_types()
                ))),
            }
        };
        tokio::time::timeout(timeout, read)
            .await
            .unwrap_or(Err(ApiError::BodyTimeout(timeout.as_millis() as u64)))
    }
}

/// A body whose Content-Length is over `limit` is refused before any of it is read.
fn refuse_announced_excess(headers: &axum::http::HeaderMap, limit: usize) -> Result<(), ApiError> {
    match headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
    {
        Some(len) if len > limit as u64 => Err(ApiError::BodyTooLarge { limit }),
        _ => Ok(()),
    }
}

/// A whole body of any type (the inference protocols' requests), within the body limit and the
/// body read timeout, as the image forms are read.
pub async fn read_body(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    let limit = state.config.body_limit;
    refuse_announced_excess(req.headers(), limit)?;
    let timeout = state.config.body_read_timeout();
    tokio::time::timeout(timeout, collect(req.into_body(), limit))
        .await
        .unwrap_or(Err(ApiError::BodyTimeout(timeout.as_millis() as u64)))
}

fn is_raw_image_type(t: &str) -> bool {
    t == OCTET_STREAM || crate::input::FORMATS.iter().any(|(_, _, m)| *m == t)
}

/// What the message of a 415 lists.
fn allowed_types() -> String {
    format!(
        "multipart/form-data (field \"image\"), application/json ({{\"url\": ...}}), or a raw \
         image body ({SUPPORTED_MEDIA_TYPES}, {OCTET_STREAM})"
    )
}

/// `multipart/form-data`: the file in field `image`, options in the other fields.
async fn multipart_form(
    req: Request,
    mut options: RawOptions,
    limit: usize,
) -> Result<Incoming, ApiError> {
    let mut multipart = Multipart::from_request(req, &())
        .await
        .map_err(|e| ApiError::Malformed(e.body_text()))?;
    let mut image = None;
    let mut images = 0;
    while let Some(field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, limit))?
    {
        let name = field.name().unwrap_or("").to_string();
        if name == "image" {
            let bytes = field.bytes().await.map_err(|e| multipart_error(e, limit))?;
            // The whole form is read before the refusal, so that the client gets the answer
            // instead of a connection closed under its upload.
            images += 1;
            image = Some(bytes);
        } else {
            let value = field.text().await.map_err(|e| multipart_error(e, limit))?;
            options.0.push((name, Value::Text(value)));
        }
    }
    if images > 1 {
        return Err(ApiError::MultipleImages);
    }
    let bytes = image
        .ok_or_else(|| ApiError::Malformed("the multipart form has no field \"image\"".into()))?;
    Ok(Incoming {
        source: Source::Bytes(bytes),
        options,
    })
}

/// `application/json`: an object with `url` and options as members.
async fn json_form(
    req: Request,
    mut options: RawOptions,
    limit: usize,
) -> Result<Incoming, ApiError> {
    let body = collect(req.into_body(), limit).await?;
    let doc: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&body)
        .map_err(|e| ApiError::Malformed(format!("the body is not a JSON object: {e}")))?;
    let mut url = None;
    for (k, v) in doc {
        match (k.as_str(), v) {
            ("url", serde_json::Value::String(s)) => url = Some(s),
            ("url", other) => {
                return Err(ApiError::Fetch(crate::fetch::FetchError::InvalidUrl(
                    format!("url must be a string, not {other}"),
                )));
            }
            // Each option checks its own type when the options are read.
            (_, v) => options.0.push((k, Value::Json(v))),
        }
    }
    let url =
        url.ok_or_else(|| ApiError::Malformed("the JSON body has no \"url\" member".into()))?;
    Ok(Incoming {
        source: Source::Url(url),
        options,
    })
}

/// Decodes `a=1&b=x%20y` into pairs. A query string that cannot be decoded (a `%` not followed
/// by two hex digits, or bytes that are not UTF-8) is a malformed request (400), like a body
/// that is not JSON: no option can be read from it.
fn query_pairs(query: Option<&str>) -> Result<Vec<(String, String)>, ApiError> {
    let Some(q) = query else {
        return Ok(Vec::new());
    };
    q.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            Ok((form_decode(k)?, form_decode(v)?))
        })
        .collect()
}

/// `application/x-www-form-urlencoded` decoding of one name or value, strictly.
fn form_decode(s: &str) -> Result<String, ApiError> {
    let malformed = |why: &str| {
        ApiError::Malformed(format!(
            "the query string is not valid: {why}; percent-encode reserved characters as %XX \
             (two hex digits) in UTF-8"
        ))
    };
    let mut bytes = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&b, tail)) = rest.split_first() {
        rest = tail;
        match b {
            b'+' => bytes.push(b' '),
            b'%' => {
                let hex = rest
                    .get(..2)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| malformed("a `%` is not followed by two hex digits"))?;
                bytes.push(hex);
                rest = &rest[2..];
            }
            b => bytes.push(b),
        }
    }
    String::from_utf8(bytes).map_err(|_| malformed("it decodes to bytes that are not UTF-8"))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_strings_decode_strictly() {
        let pairs = query_pairs(Some("method=gradcam%2B%2B&top_k=2&&flag&q=a+b%20c")).unwrap();
        let want = [
            ("method", "gradcam++"),
            ("top_k", "2"),
            ("flag", ""),
            ("q", "a b c"),
        ];
        assert_eq!(
            pairs,
            want.map(|(k, v)| (k.to_string(), v.to_string())).to_vec()
        );
        for bad in ["top_k=%ZZ", "%", "a=%4", "%FF=1", "x=%C3%28"] {
            assert!(
                matches!(query_pairs(Some(bad)), Err(ApiError::Malformed(_))),
                "{bad}"
            );
        }
    }
}
