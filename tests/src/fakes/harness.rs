//! The machinery every vendor fake shares, so a vendor module holds only its contract (routes,
//! state, checks, answers): an axum server on a random local port, a recording of every request
//! and answer, and the scripted failures a test injects.
//!
//! How a fake is put together: the vendor module builds its [`Router`], creates a [`Script`],
//! and calls [`FakeServer::start`] with a [`Contract`] saying which requests are writes and how
//! the vendor answers an outage and a throttle. The harness then wraps every request:
//! - it records method, path, query, headers, body, the status and body answered ([`Recorded`]);
//! - for a write it counts concurrency ([`Script::max_in_flight`]), answers the injected
//!   outages ([`Script::fail_next`]) and throttles ([`Script::throttle_next`]) in the vendor's
//!   own words before the handler runs, and holds the answer back for
//!   [`Script::set_answer_delay`] after the handler has stored (so a client killed meanwhile
//!   wrote without hearing).
//!
//! Content-based injections ([`Script::refuse`], [`Script::fail_once`]) need the vendor's view of
//! an item, so the handlers ask [`Script::verdict`] for each item (or each request, for APIs that
//! take one item per call) and answer in the vendor's terms.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

/// The largest request body the harness buffers (vendors' own limits are checked by the fakes).
const MAX_BODY: usize = 64 * 1024 * 1024;

/// One request as a fake saw it, with what it answered.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// Header names are lower case, as HTTP/1.1 sends them on the wire here.
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
    pub status: u16,
    pub answer: Bytes,
    /// Whether the answer has been sent (it is held back by the answer delay).
    pub answered: bool,
    pub write: bool,
}

impl Recorded {
    /// The first value of a header (name in any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The request body as JSON, if it is JSON.
    pub fn body_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.body).ok()
    }

    /// The answer body as JSON, if it is JSON.
    pub fn answer_json(&self) -> Option<Value> {
        serde_json::from_slice(&self.answer).ok()
    }
}

/// What the content-based injections say about one item (or one single-item request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Accept,
    /// Refused with the vendor's validation error, every time until [`Script::fix`].
    Refuse,
    /// Fails this once, transiently; the next attempt is accepted.
    FailOnce,
}

#[derive(Debug, Default)]
struct ScriptState {
    fail_next: usize,
    throttle_next: usize,
    retry_after_secs: u64,
    refuse: Vec<String>,
    fail_once: Vec<String>,
    answer_delay: Duration,
    requests: Vec<Recorded>,
    in_flight: usize,
    max_in_flight: usize,
}

/// Scripted failures and the request log, shared by all vendor fakes (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Script(Arc<Mutex<ScriptState>>);

impl Script {
    pub fn new() -> Self {
        Self::default()
    }

    fn with<R>(&self, f: impl FnOnce(&mut ScriptState) -> R) -> R {
        f(&mut self.0.lock().expect("script"))
    }

    /// The next `n` write requests are answered with the vendor's server error (before throttles).
    pub fn fail_next(&self, n: usize) {
        self.with(|s| s.fail_next = n);
    }

    /// The next `n` write requests are answered with the vendor's own 429 signal; where the
    /// vendor sends a retry delay, it is `retry_after_secs`.
    pub fn throttle_next(&self, n: usize, retry_after_secs: u64) {
        self.with(|s| {
            s.throttle_next = n;
            s.retry_after_secs = retry_after_secs;
        });
    }

    /// Items (or single-item requests) whose JSON contains `needle` are refused with the vendor's
    /// validation error until [`Script::fix`].
    pub fn refuse(&self, needle: &str) {
        self.with(|s| s.refuse.push(needle.to_owned()));
    }

    /// Lift every [`Script::refuse`].
    pub fn fix(&self) {
        self.with(|s| s.refuse.clear());
    }

    /// The next item whose JSON contains `needle` fails once, transiently; then it is accepted.
    pub fn fail_once(&self, needle: &str) {
        self.with(|s| s.fail_once.push(needle.to_owned()));
    }

    /// Each write is answered `d` after the fake has stored it.
    pub fn set_answer_delay(&self, d: Duration) {
        self.with(|s| s.answer_delay = d);
    }

    /// Every request so far, in arrival order (a request still being handled is not listed).
    pub fn requests(&self) -> Vec<Recorded> {
        self.with(|s| s.requests.clone())
    }

    /// The write requests so far.
    pub fn writes(&self) -> Vec<Recorded> {
        self.with(|s| s.requests.iter().filter(|r| r.write).cloned().collect())
    }

    /// The highest number of write requests handled at once.
    pub fn max_in_flight(&self) -> usize {
        self.with(|s| s.max_in_flight)
    }

    /// Whether an item whose JSON is `json` is refused now (uses nothing up).
    pub fn refused(&self, json: &str) -> bool {
        self.with(|s| s.refuse.iter().any(|n| json.contains(n.as_str())))
    }

    /// What the content-based injections say about an item whose JSON is `json`. A
    /// [`Verdict::FailOnce`] is used up by this call.
    pub fn verdict(&self, json: &str) -> Verdict {
        self.with(|s| {
            if s.refuse.iter().any(|n| json.contains(n.as_str())) {
                return Verdict::Refuse;
            }
            match s.fail_once.iter().position(|n| json.contains(n.as_str())) {
                Some(i) => {
                    s.fail_once.remove(i);
                    Verdict::FailOnce
                }
                None => Verdict::Accept,
            }
        })
    }
}

/// What the harness needs to know of a vendor to apply the generic injections.
#[derive(Debug, Clone, Copy)]
pub struct Contract {
    /// Whether a request writes (is counted, delayed, and subject to outages and throttles).
    pub is_write: fn(&Method, &str) -> bool,
    /// The vendor's answer during an outage.
    pub server_error: fn() -> Response,
    /// The vendor's throttle answer to the request body, with the retry delay in seconds.
    pub throttled: fn(&[u8], u64) -> Response,
}

/// A fake running on a random local port.
#[derive(Debug, Clone)]
pub struct FakeServer {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
}

#[derive(Clone)]
struct Wrap {
    script: Script,
    contract: Contract,
}

impl FakeServer {
    /// Serve `router` behind the recording and injection layer.
    pub async fn start(router: Router, script: &Script, contract: Contract) -> Self {
        let wrap = Wrap {
            script: script.clone(),
            contract,
        };
        let app = router
            .layer(middleware::from_fn_with_state(wrap, around))
            .layer(DefaultBodyLimit::disable());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base: format!("http://{addr}"),
        }
    }
}

/// Decrements the in-flight count however the request ends (a client may hang up mid-delay).
struct InFlight(Script);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.with(|s| s.in_flight -= 1);
    }
}

async fn around(State(wrap): State<Wrap>, request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let Ok(body) = axum::body::to_bytes(body, MAX_BODY).await else {
        return (StatusCode::PAYLOAD_TOO_LARGE, "fake: body too large to buffer").into_response();
    };
    let path = parts.uri.path().to_owned();
    let write = (wrap.contract.is_write)(&parts.method, &path);
    let mut recorded = Recorded {
        at: Instant::now(),
        method: parts.method.to_string(),
        path,
        query: parts.uri.query().map(str::to_owned),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect(),
        body: body.clone(),
        status: 0,
        answer: Bytes::new(),
        answered: false,
        write,
    };
    let script = &wrap.script;
    let (injected, delay, _guard) = if write {
        script.with(|s| {
            s.in_flight += 1;
            s.max_in_flight = s.max_in_flight.max(s.in_flight);
        });
        let guard = InFlight(script.clone());
        let injected = script.with(|s| {
            if s.fail_next > 0 {
                s.fail_next -= 1;
                Some((wrap.contract.server_error)())
            } else if s.throttle_next > 0 {
                s.throttle_next -= 1;
                Some((wrap.contract.throttled)(&body, s.retry_after_secs))
            } else {
                None
            }
        });
        (injected, script.with(|s| s.answer_delay), Some(guard))
    } else {
        (None, Duration::ZERO, None)
    };
    let response = match injected {
        Some(r) => r,
        None => next.run(Request::from_parts(parts, Body::from(body))).await,
    };
    let (parts, answer) = response.into_parts();
    let answer = axum::body::to_bytes(answer, MAX_BODY).await.unwrap_or_default();
    recorded.status = parts.status.as_u16();
    recorded.answer = answer.clone();
    let index = script.with(|s| {
        s.requests.push(recorded);
        s.requests.len() - 1
    });
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    script.with(|s| s.requests[index].answered = true);
    Response::from_parts(parts, Body::from(answer))
}

/// What the conformance suite needs from every vendor fake.
pub trait VendorFake: Send + Sync {
    fn script(&self) -> &Script;
    /// The vendor's stored objects, in the vendor's terms after the vendor's own semantics
    /// (dedup, upsert, …), as JSON.
    fn stored(&self) -> Vec<Value>;
}

// ---- small helpers the vendor modules share ------------------------------------------------

/// A JSON answer.
pub fn json(status: StatusCode, body: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

/// Requests other than GET and HEAD write.
pub fn non_get_writes(method: &Method, _path: &str) -> bool {
    method != Method::GET && method != Method::HEAD
}

pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as i64
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for milliseconds since the epoch (UTC), as HubSpot writes times.
pub fn iso8601_z(millis: i64) -> String {
    iso8601(millis).replace("+00:00", "Z")
}

/// `YYYY-MM-DDTHH:MM:SS.mmm+00:00` for milliseconds since the epoch (UTC).
pub fn iso8601(millis: i64) -> String {
    let (days, ms) = (millis.div_euclid(86_400_000), millis.rem_euclid(86_400_000));
    // Howard Hinnant's days-to-civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let (h, m, s) = (ms / 3_600_000, ms / 60_000 % 60, ms / 1000 % 60);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{s:02}.{:03}+00:00",
        ms % 1000
    )
}

/// The media type of a `Content-Type` value, lower case, without parameters.
pub fn media_type(headers: &axum::http::HeaderMap) -> Option<String> {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or_default().trim().to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_refuse_until_fixed_and_fail_once_only_once() {
        let script = Script::new();
        script.refuse("bad");
        script.fail_once("flaky");
        assert_eq!(script.verdict(r#"{"x":"bad"}"#), Verdict::Refuse);
        assert_eq!(script.verdict(r#"{"x":"bad"}"#), Verdict::Refuse);
        assert_eq!(script.verdict(r#"{"x":"flaky"}"#), Verdict::FailOnce);
        assert_eq!(script.verdict(r#"{"x":"flaky"}"#), Verdict::Accept);
        script.fix();
        assert_eq!(script.verdict(r#"{"x":"bad"}"#), Verdict::Accept);
    }

    #[test]
    fn iso_times_are_utc_calendar_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00.000+00:00");
        assert_eq!(iso8601(1_709_251_199_123), "2024-02-29T23:59:59.123+00:00");
    }
}
