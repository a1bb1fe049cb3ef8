//! Content negotiation on `Accept` (RFC 9110, section 12.5.1) between the media types a route
//! can answer with: quality values, `type/*` and `*/*` ranges, the most specific range deciding
//! for each offered type, and the server's order breaking ties.

use super::problem::ApiError;

/// Picks what to answer with from `offered` (in the server's order of preference). No `Accept`
/// header accepts anything; nothing acceptable is a 406.
pub fn choose(accept: Option<&str>, offered: &[&'static str]) -> Result<&'static str, ApiError> {
    let Some(accept) = accept.filter(|a| !a.trim().is_empty()) else {
        return Ok(offered[0]);
    };
    let ranges: Vec<(&str, f32)> = accept.split(',').filter_map(range).collect();
    if ranges.is_empty() {
        // Not one readable media range: the header is disregarded, as RFC 9110 allows.
        return Ok(offered[0]);
    }
    let mut best: Option<(&'static str, f32)> = None;
    for &t in offered {
        let q = quality(&ranges, t);
        if q > 0.0 && best.is_none_or(|(_, b)| q > b) {
            best = Some((t, q));
        }
    }
    best.map(|(t, _)| t).ok_or_else(|| {
        ApiError::NotAcceptable(format!(
            "nothing this route answers with is acceptable (Accept: {accept}); it answers with {}",
            offered.join(" or ")
        ))
    })
}

/// One media range and its quality; `None` for a range that cannot be read (ignored).
fn range(s: &str) -> Option<(&str, f32)> {
    let mut parts = s.split(';');
    let media = parts.next()?.trim();
    if !media.contains('/') {
        return None;
    }
    let mut q = 1.0;
    for p in parts {
        if let Some((k, v)) = p.split_once('=')
            && k.trim().eq_ignore_ascii_case("q")
        {
            q = v
                .trim()
                .parse::<f32>()
                .ok()
                .filter(|q| (0.0..=1.0).contains(q))?;
        }
    }
    Some((media, q))
}

/// The quality the most specific matching range gives `media` (0 when none matches).
fn quality(ranges: &[(&str, f32)], media: &str) -> f32 {
    let (kind, _) = media.split_once('/').unwrap_or((media, ""));
    let mut best: Option<(u8, f32)> = None;
    for &(range, q) in ranges {
        let specificity = if range.eq_ignore_ascii_case(media) {
            2
        } else if range
            .strip_suffix("/*")
            .is_some_and(|k| k.eq_ignore_ascii_case(kind))
        {
            1
        } else if range == "*/*" {
            0
        } else {
            continue;
        };
        if best.is_none_or(|(s, _)| specificity > s) {
            best = Some((specificity, q));
        }
    }
    best.map_or(0.0, |(_, q)| q)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOTH: &[&str] = &["application/json", "image/png"];

    #[test]
    fn quality_wildcards_and_the_server_order_decide() {
        let cases: &[(Option<&str>, &str)] = &[
            (None, "application/json"),
            (Some(""), "application/json"),
            (Some("*/*"), "application/json"),
            (Some("image/png"), "image/png"),
            (Some("image/*"), "image/png"),
            (Some("application/json, image/png"), "application/json"),
            (Some("image/png, application/json"), "application/json"),
            (Some("application/json;q=0.5, image/png"), "image/png"),
            (Some("image/*;q=0.9, */*;q=0.1"), "image/png"),
            (Some("*/*;q=0.8, application/json;q=0"), "image/png"),
            (Some("IMAGE/PNG"), "image/png"),
            (Some("text/html, */*;q=0.1"), "application/json"),
            (Some("image/png; q=1; charset=x, nonsense"), "image/png"),
            (Some("Wd[<ME"), "application/json"),
        ];
        for (accept, want) in cases {
            assert_eq!(choose(*accept, BOTH).unwrap(), *want, "{accept:?}");
        }
    }

    #[test]
    fn nothing_acceptable_is_406_naming_what_is_offered() {
        for accept in [
            "text/html",
            "image/jpeg",
            "image/png;q=0, application/json;q=0",
        ] {
            match choose(Some(accept), BOTH) {
                Err(ApiError::NotAcceptable(m)) => {
                    assert!(m.contains("application/json or image/png"), "{m}")
                }
                other => panic!("{accept}: {other:?}"),
            }
        }
        assert!(choose(Some("image/png"), &["application/json"]).is_err());
    }
}
