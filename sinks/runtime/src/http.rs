//! Helpers HTTP connectors share to classify answers the same way.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::connector::{DeliveryError, StartError};

/// The one HTTP client builder of the sinks: rustls, the request timeout of `[sink]`
/// (`request_timeout_ms`, the same limit the runtime puts on a whole delivery call), a
/// connect timeout, and a `nectar/<version>` user agent.
pub fn client(request_timeout: Duration) -> anyhow::Result<reqwest::Client> {
    Ok(client_builder(request_timeout).build()?)
}

/// [`client`] before `build()`, for a connector that adds to it (default headers, a CA).
pub fn client_builder(request_timeout: Duration) -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(request_timeout)
        .connect_timeout(request_timeout.min(Duration::from_secs(10)))
        .user_agent(concat!("nectar/", env!("CARGO_PKG_VERSION")))
}

/// The one start-check rule: how a non-2xx answer to a start check reads. 401 and 403 mean
/// the credentials are wrong; 5xx, 429 and 408 that the target is unavailable now (the start
/// check retries); anything else that the configuration cannot work with this target.
pub fn start_status(status: StatusCode, what: &str, body: &str) -> StartError {
    let message = format!("{what} answered HTTP {}: {}", status.as_u16(), excerpt(body));
    match status.as_u16() {
        401 | 403 => StartError::Credentials(message),
        408 | 429 | 500..=599 => StartError::Unreachable(message),
        _ => StartError::Config(message),
    }
}

/// The `Retry-After` header (delta-seconds or an HTTP date), capped at one hour.
pub fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let wait = if let Ok(seconds) = value.parse::<f64>() {
        if !seconds.is_finite() || seconds < 0.0 {
            return None;
        }
        Duration::from_secs_f64(seconds)
    } else {
        let at = httpdate::parse_http_date(value).ok()?;
        at.duration_since(SystemTime::now()).unwrap_or_default()
    };
    Some(wait.min(Duration::from_secs(3600)))
}

/// The whole-request meaning of a status every HTTP API shares: 429, 408 and 5xx are worth
/// retrying (with the target's `Retry-After`); 401 and 403 mean the credentials no longer
/// work. `None` for statuses the connector must read the body of (2xx, 207, other 4xx).
pub fn classify_status(status: StatusCode, headers: &HeaderMap, body: &str) -> Option<DeliveryError> {
    let excerpt = excerpt(body);
    if status == StatusCode::TOO_MANY_REQUESTS {
        return Some(DeliveryError::Retry {
            reason: format!("rate limited (HTTP 429): {excerpt}"),
            after: retry_after(headers),
        });
    }
    if status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT {
        return Some(DeliveryError::Retry {
            reason: format!("HTTP {}: {excerpt}", status.as_u16()),
            after: retry_after(headers),
        });
    }
    if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
        return Some(DeliveryError::Fatal(format!(
            "credentials rejected (HTTP {}): {excerpt}",
            status.as_u16()
        )));
    }
    None
}

/// A transport failure (connection refused, reset, timeout): the target is unavailable.
pub fn transport_error(e: &reqwest::Error) -> DeliveryError {
    DeliveryError::retry(format!("request failed: {}", error_chain(e)))
}

/// An error with its sources, `: `-separated (reqwest hides the cause in `source()`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// At most 500 characters of a response body, for logs and dead-letter headers.
pub fn excerpt(body: &str) -> String {
    const MAX: usize = 500;
    if body.len() <= MAX {
        return body.to_owned();
    }
    let mut end = MAX;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &body[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn retry_after_reads_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("30"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(30)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        assert_eq!(retry_after(&h), Some(Duration::ZERO), "a date in the past means now");
        let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(120));
        h.insert(RETRY_AFTER, HeaderValue::from_str(&future).unwrap());
        let wait = retry_after(&h).unwrap();
        assert!(
            wait > Duration::from_secs(115) && wait <= Duration::from_secs(120),
            "{wait:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn statuses_are_classified() {
        let h = HeaderMap::new();
        assert!(matches!(
            classify_status(StatusCode::TOO_MANY_REQUESTS, &h, ""),
            Some(DeliveryError::Retry { .. })
        ));
        assert!(matches!(
            classify_status(StatusCode::BAD_GATEWAY, &h, ""),
            Some(DeliveryError::Retry { .. })
        ));
        assert!(matches!(
            classify_status(StatusCode::UNAUTHORIZED, &h, "bad token"),
            Some(DeliveryError::Fatal(m)) if m.contains("bad token")
        ));
        assert_eq!(classify_status(StatusCode::BAD_REQUEST, &h, ""), None);
        assert_eq!(classify_status(StatusCode::OK, &h, ""), None);
    }

    #[test]
    fn excerpt_cuts_on_a_char_boundary() {
        let long = "é".repeat(400);
        let e = excerpt(&long);
        assert!(e.ends_with('…'));
        assert!(e.len() <= 504);
    }
}
