//! A fake Mixpanel Import Events API (`POST /import`), checked and answered as Mixpanel
//! documents it.
//!
//! Sources:
//! - Import Events — <https://docs.mixpanel.com/reference/import-events> and the OpenAPI text it
//!   is built from (`mixpanel/docs`, `openapi/src/ingestion.openapi.yaml`): `strict=1` validates
//!   each event and reports the failures; `project_id` plus HTTP Basic with an Owner/Admin
//!   service account (`username:secret`), or the project token as Basic username with an empty
//!   password; `Content-Type: application/json` (an array) or `application/x-ndjson`;
//!   `Content-Encoding: gzip` (the fake cannot decode it and says so with a 400). Up to 2000
//!   events and 10 MB uncompressed a request; each event under 1 MB with fewer than 255
//!   properties. Each event needs `event`, `properties.time` (seconds or milliseconds; not
//!   before 1971-01-01, not more than 1 hour ahead), `properties.distinct_id` (empty allowed;
//!   placeholders such as `anon`, `null`, `0`, `00000000-0000-0000-0000-000000000000` refused)
//!   and `properties.$insert_id` ("≤ 36 bytes and contain only alphanumeric characters or
//!   `-`", none of the placeholders).
//! - Answers: 200 `{"code": 200, "num_records_imported": N, "status": "OK"}`; a 400 is a partial
//!   success — <https://docs.mixpanel.com/troubleshooting/errors/400-bad-request> — valid events
//!   are imported and the others listed: `{"code": 400, "error": "some data points in the
//!   request failed validation", "status": "Bad Request", "num_records_imported",
//!   "failed_records": [{"index", "insert_id", "field", "message"}]}`; 401 `{"code": 401,
//!   "error": "Invalid credentials", "status": "Unauthorized"}`; 413 `{"code": 413, "error":
//!   "request exceeds max limit of … bytes", "status": "Request Entity Too Large"}`
//!   (<https://docs.mixpanel.com/troubleshooting/errors/413-payload-too-large>); 429 `{"code":
//!   429, "error": "Project exceeded rate limits. Please retry the request with exponential
//!   backoff.", "status": "Too Many Requests"}` — no `Retry-After` is documented, so none is sent;
//!   502/503 are the documented transient errors (an outage answers 503).
//! - Dedup — <https://docs.mixpanel.com/reference/event-deduplication>: events with identical
//!   `event`, `distinct_id`, `time` and `$insert_id` are one event, the latest ingested one
//!   counting ([`VendorFake::stored`]); [`FakeMixpanel::imported_raw`] keeps every import.
//!
//! The vendor disagrees with itself on the size limit (the OpenAPI text and its 413 example say
//! 2 MB, the current reference page says 10 MB); the fake follows the current page. Messages in
//! `failed_records` other than the documented `properties.time` one are the fake's wording;
//! `strict=0` (not described beyond "recommended 1") drops invalid events silently here.
//! Injections: `refuse` and `fail_once` fail that event in `failed_records`.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use base64::Engine;
use serde_json::{Map, Value, json};

use super::harness::{self, Contract, FakeServer, Script, VendorFake, Verdict};

pub const PROJECT_ID: &str = "2468013";
pub const SERVICE_ACCOUNT: &str = "nectar-fake.8f3e1c.mp-service-account";
pub const SERVICE_SECRET: &str = "fAkEsErViCeAcCoUnTsEcReT0123456789";
pub const PROJECT_TOKEN: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0";
pub const MAX_EVENTS: usize = 2000;
pub const MAX_BYTES: usize = 10 * 1024 * 1024;
const PLACEHOLDERS: [&str; 17] = [
    "00000000-0000-0000-0000-000000000000",
    "anon",
    "anonymous",
    "nil",
    "none",
    "null",
    "n/a",
    "na",
    "undefined",
    "unknown",
    "<nil>",
    "0",
    "-1",
    "true",
    "false",
    "[]",
    "{}",
];

type Shared = Arc<Mutex<Vec<Value>>>;

/// A running fake Mixpanel ingestion API.
#[derive(Debug, Clone)]
pub struct FakeMixpanel {
    pub server: FakeServer,
    script: Script,
    imported: Shared,
}

impl FakeMixpanel {
    pub async fn start() -> Self {
        let script = Script::new();
        let imported = Shared::default();
        let router = Router::new()
            .route("/import", post(import))
            .with_state((script.clone(), imported.clone()));
        let contract = Contract {
            is_write: harness::non_get_writes,
            server_error: || answer(StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable", json!({})),
            throttled: |_, _| {
                let error = "Project exceeded rate limits. Please retry the request with exponential backoff.";
                answer(StatusCode::TOO_MANY_REQUESTS, error, json!({}))
            },
        };
        let server = FakeServer::start(router, &script, contract).await;
        Self {
            server,
            script,
            imported,
        }
    }

    /// The API host (`https://api.mixpanel.com` in production).
    pub fn base_url(&self) -> &str {
        &self.server.base
    }

    /// The import URL with `strict=1` and the project id.
    pub fn import_url(&self) -> String {
        format!("{}/import?strict=1&project_id={PROJECT_ID}", self.server.base)
    }

    /// Every imported event, duplicates included, in arrival order.
    pub fn imported_raw(&self) -> Vec<Value> {
        self.imported.lock().expect("mixpanel").clone()
    }
}

impl VendorFake for FakeMixpanel {
    fn script(&self) -> &Script {
        &self.script
    }

    /// The events after Mixpanel's dedup: one per (event, distinct_id, time, $insert_id), the
    /// latest import of it.
    fn stored(&self) -> Vec<Value> {
        let mut keys: Vec<Value> = Vec::new();
        let mut events: Vec<Value> = Vec::new();
        for e in self.imported_raw() {
            let p = &e["properties"];
            let key = json!([e["event"], p["distinct_id"], time_ms(&p["time"]), p["$insert_id"]]);
            match keys.iter().position(|k| *k == key) {
                Some(i) => events[i] = e,
                None => {
                    keys.push(key);
                    events.push(e);
                }
            }
        }
        events
    }
}

fn answer(status: StatusCode, error: &str, extra: Value) -> Response {
    let mut body = json!({"code": status.as_u16(), "error": error,
                          "status": status.canonical_reason().unwrap_or_default()});
    body.as_object_mut()
        .expect("object")
        .extend(extra.as_object().cloned().unwrap_or_default());
    harness::json(status, &body)
}

/// Seconds or milliseconds since the epoch, as milliseconds.
fn time_ms(time: &Value) -> Option<i64> {
    let t = time.as_i64()?;
    Some(if t.abs() >= 100_000_000_000 { t } else { t * 1000 })
}

fn authenticate(headers: &HeaderMap, project_id: Option<&str>) -> bool {
    let credentials = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok());
    match credentials.as_deref().and_then(|c| c.split_once(':')) {
        Some((user, secret)) if user == SERVICE_ACCOUNT => secret == SERVICE_SECRET && project_id == Some(PROJECT_ID),
        Some((token, "")) => token == PROJECT_TOKEN && project_id.is_none_or(|p| p == PROJECT_ID),
        _ => false,
    }
}

/// Why an event fails validation: `(field, message)`.
fn check_event(event: &Value, now_ms: i64) -> Result<(), (String, String)> {
    let invalid = |field: &str, why: &str| Err((field.to_owned(), format!("'{field}' is invalid: {why}")));
    let Some(object) = event.as_object() else {
        return invalid("event", "must be a JSON object");
    };
    if object.get("event").and_then(Value::as_str).is_none_or(str::is_empty) {
        return invalid("event", "must be a non-empty string");
    }
    let Some(props) = object.get("properties").and_then(Value::as_object) else {
        return invalid("properties", "must be a JSON object");
    };
    if event.to_string().len() >= 1024 * 1024 {
        return invalid("properties", "event must be smaller than 1MB of uncompressed JSON");
    }
    if props.len() >= 255 {
        return invalid("properties", "must have fewer than 255 properties");
    }
    match time_ms(props.get("time").unwrap_or(&Value::Null)) {
        None => return invalid("properties.time", "must be specified as seconds since epoch"),
        Some(t) if t < 31_536_000_000 => return invalid("properties.time", "must be after 1971-01-01"),
        Some(t) if t > now_ms + 3_600_000 => {
            return invalid("properties.time", "must not be more than 1 hour in the future");
        }
        Some(_) => {}
    }
    let placeholder = |s: &str| PLACEHOLDERS.contains(&s.trim().to_ascii_lowercase().as_str());
    match props.get("distinct_id") {
        Some(Value::String(d)) if !placeholder(d) => {}
        Some(Value::String(_)) => return invalid("properties.distinct_id", "must not be a placeholder value"),
        _ => return invalid("properties.distinct_id", "must be specified as a string"),
    }
    match props.get("$insert_id").and_then(Value::as_str) {
        None => invalid("properties.$insert_id", "must be specified"),
        Some(id) if id.is_empty() || id.len() > 36 || placeholder(id) => invalid(
            "properties.$insert_id",
            "must be 1-36 bytes and not a placeholder value",
        ),
        Some(id) if !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => invalid(
            "properties.$insert_id",
            "must contain only alphanumeric characters or '-'",
        ),
        Some(_) => Ok(()),
    }
}

async fn import(
    State((script, imported)): State<(Script, Shared)>,
    Query(query): Query<Map<String, Value>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let bad = |error: &str| answer(StatusCode::BAD_REQUEST, error, json!({}));
    if !authenticate(&headers, query.get("project_id").and_then(Value::as_str)) {
        return answer(StatusCode::UNAUTHORIZED, "Invalid credentials", json!({}));
    }
    if headers.get(header::CONTENT_ENCODING).is_some() {
        return bad("fake: Content-Encoding is not decoded here; send the JSON uncompressed");
    }
    if body.len() > MAX_BYTES {
        let error = format!("request exceeds max limit of {MAX_BYTES} bytes");
        return answer(StatusCode::PAYLOAD_TOO_LARGE, &error, json!({}));
    }
    let events: Vec<Value> = match harness::media_type(&headers).as_deref() {
        Some("application/json") => match serde_json::from_slice(&body) {
            Ok(Value::Array(events)) => events,
            _ => return bad("unable to parse request body as a JSON array"),
        },
        Some("application/x-ndjson") => {
            let lines = body
                .split(|b| *b == b'\n')
                .filter(|l| !l.iter().all(u8::is_ascii_whitespace));
            match lines.map(serde_json::from_slice::<Value>).collect() {
                Ok(events) => events,
                Err(_) => return bad("unable to parse request body as newline-delimited JSON"),
            }
        }
        _ => return bad("Content-Type must be application/json or application/x-ndjson"),
    };
    if events.is_empty() {
        return bad("request body must contain at least one event");
    }
    if events.len() > MAX_EVENTS {
        let error = format!("request exceeds max limit of {MAX_EVENTS} records");
        return answer(StatusCode::PAYLOAD_TOO_LARGE, &error, json!({}));
    }
    let now = harness::now_millis();
    let mut failed = Vec::new();
    let mut accepted = Vec::new();
    for (index, event) in events.into_iter().enumerate() {
        let verdict = match check_event(&event, now) {
            Err(why) => Err(why),
            Ok(()) => match script.verdict(&event.to_string()) {
                Verdict::Accept => Ok(()),
                Verdict::Refuse => Err((
                    "properties".into(),
                    "'properties' is invalid: refused by the test script".into(),
                )),
                Verdict::FailOnce => Err((
                    "properties".into(),
                    "'properties' is invalid: failed once by the test script".into(),
                )),
            },
        };
        match verdict {
            Ok(()) => accepted.push(event),
            Err((field, message)) => failed.push(json!({"index": index,
                "insert_id": event.pointer("/properties/$insert_id").cloned().unwrap_or(Value::Null),
                "field": field, "message": message})),
        }
    }
    let imported_now = accepted.len();
    imported.lock().expect("mixpanel").extend(accepted);
    if failed.is_empty() || query.get("strict").and_then(Value::as_str) != Some("1") {
        let body = json!({"code": 200, "num_records_imported": imported_now, "status": "OK"});
        return harness::json(StatusCode::OK, &body);
    }
    let extra = json!({"num_records_imported": imported_now, "failed_records": failed});
    answer(
        StatusCode::BAD_REQUEST,
        "some data points in the request failed validation",
        extra,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(insert_id: &str, time: i64) -> Value {
        json!({"event": "Lead Captured", "properties": {"time": time, "distinct_id": "user-1", "$insert_id": insert_id}})
    }

    async fn import(url: &str, user: &str, secret: &str, events: &Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(url)
            .basic_auth(user, Some(secret))
            .json(events)
            .send()
            .await
            .expect("send");
        (r.status().as_u16(), r.json().await.expect("json"))
    }

    #[tokio::test]
    async fn imports_dedups_and_reports_failed_records() {
        let fake = FakeMixpanel::start().await;
        let (url, now) = (fake.import_url(), harness::now_secs());
        let batch = json!([event("a-1", now), event("a-2", now)]);
        let (status, body) = import(&url, SERVICE_ACCOUNT, SERVICE_SECRET, &batch).await;
        assert_eq!(
            (status, body),
            (200, json!({"code": 200, "num_records_imported": 2, "status": "OK"}))
        );
        // A retry of the same events: imported again, counted once after dedup.
        import(&url, SERVICE_ACCOUNT, SERVICE_SECRET, &batch).await;
        assert_eq!((fake.imported_raw().len(), fake.stored().len()), (4, 2));

        let mixed = json!([event("b-1", now), event("bad id!", now), event("b-3", now + 7200)]);
        let (status, body) = import(&url, SERVICE_ACCOUNT, SERVICE_SECRET, &mixed).await;
        assert_eq!((status, body["num_records_imported"].as_u64()), (400, Some(1)));
        let failed: Vec<(u64, &str)> = body["failed_records"]
            .as_array()
            .expect("failed")
            .iter()
            .map(|f| (f["index"].as_u64().expect("index"), f["field"].as_str().expect("field")))
            .collect();
        assert_eq!(failed, vec![(1, "properties.$insert_id"), (2, "properties.time")]);
        assert_eq!(fake.stored().len(), 3);

        let (status, body) = import(&url, SERVICE_ACCOUNT, "wrong", &batch).await;
        assert_eq!((status, body["error"].as_str()), (401, Some("Invalid credentials")));
        let (status, _) = import(&url, PROJECT_TOKEN, "", &batch).await;
        assert_eq!(status, 200);
    }

    #[tokio::test]
    async fn throttles_with_429_and_no_retry_after() {
        let fake = FakeMixpanel::start().await;
        fake.script().throttle_next(1, 2);
        let r = reqwest::Client::new()
            .post(fake.import_url())
            .basic_auth(SERVICE_ACCOUNT, Some(SERVICE_SECRET))
            .json(&json!([event("c-1", harness::now_secs())]))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 429);
        assert!(r.headers().get("retry-after").is_none());
        assert_eq!(r.json::<Value>().await.expect("json")["status"], "Too Many Requests");
        assert!(fake.stored().is_empty());
    }
}
