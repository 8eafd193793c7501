//! A fake Amplitude HTTP V2 API (`POST /2/httpapi`), checked and answered as Amplitude
//! documents it.
//!
//! Sources:
//! - HTTP V2 API — <https://amplitude.com/docs/apis/analytics/http-v2>: `Content-Type:
//!   application/json`, body `{"api_key", "events": [...], "options"?}` (the key is in the body);
//!   each event needs `event_type` and a `user_id` or `device_id`, ids at least 5 characters
//!   unless `options.min_id_length` says otherwise; `time` in milliseconds; an all-zero
//!   `device_id` is dropped with an error; requests "under 1 MB with fewer than 2000 events",
//!   else 413. Success: `{"code": 200, "events_ingested", "payload_size_bytes",
//!   "server_upload_time"}`.
//! - Batching and retries — <https://amplitude.com/docs/apis/analytics/http-api-batching-retries>:
//!   up to 2,000 events; "Amplitude ignores an event that repeats an insert_id from the past 7
//!   days" ([`VendorFake::stored`] is after that dedup, [`FakeAmplitude::received_raw`] before);
//!   "When a 400 response lists rejected events, remove those events and resend the rest" —
//!   so a 400 ingests nothing; retry 429 and 5xx.
//! - The 400 and 429 bodies: `{"code": 400, "error", "missing_field"?,
//!   "events_with_invalid_fields"?, "events_with_missing_fields"?,
//!   "events_with_invalid_id_lengths"?}` (maps of field → event indexes) and `{"code": 429,
//!   "error", "eps_threshold", "throttled_devices", "throttled_users", "throttled_events"}`, as
//!   the HTTP V2 page's response section and Amplitude's own SDKs (Amplitude-Python,
//!   analytics-node) read them; 413 `{"code": 413, "error": "Payload too large"}`. No
//!   `Retry-After` is documented, so none is sent.
//!
//! Not confirmed on a vendor page: the wording of `error` strings, and the answer to a wrong
//! key (here 400 `{"code": 400, "error": "Invalid API key: <key>"}`). An event with neither id is
//! listed under both `user_id` and `device_id` in `events_with_missing_fields`. Injections:
//! outage 500; `refuse` lists the event in `events_with_invalid_fields.event_properties`;
//! `fail_once` throttles just that event (429 naming it in `throttled_events`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::post;
use serde_json::{Map, Value, json};

use super::harness::{self, Contract, FakeServer, Script, VendorFake, Verdict};

pub const API_KEY: &str = "5e5c0b1a2f3d4e6f7a8b9c0d1e2f3a4b";
pub const MAX_EVENTS: usize = 2000;
pub const MAX_BYTES: usize = 1024 * 1024;
const DEDUP_WINDOW_MS: i64 = 7 * 24 * 3600 * 1000;
const ZERO_DEVICE: &str = "00000000-0000-0000-0000-000000000000";

#[derive(Debug, Default)]
struct Store {
    raw: Vec<Value>,
    events: Vec<Value>,
    insert_ids: HashMap<String, i64>,
}

type Shared = Arc<Mutex<Store>>;

/// A running fake Amplitude ingestion API.
#[derive(Debug, Clone)]
pub struct FakeAmplitude {
    pub server: FakeServer,
    script: Script,
    state: Shared,
}

impl FakeAmplitude {
    pub async fn start() -> Self {
        let script = Script::new();
        let state = Shared::default();
        let router = Router::new()
            .route("/2/httpapi", post(upload))
            .with_state((script.clone(), state.clone()));
        let contract = Contract {
            is_write: harness::non_get_writes,
            server_error: || error(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error", json!({})),
            throttled: |body, _| {
                let events = serde_json::from_slice::<Value>(body).unwrap_or_default()["events"].clone();
                let all = (0..events.as_array().map_or(0, Vec::len)).collect::<Vec<_>>();
                throttled(&events, &all)
            },
        };
        let server = FakeServer::start(router, &script, contract).await;
        Self { server, script, state }
    }

    pub fn base_url(&self) -> &str {
        &self.server.base
    }

    /// `…/2/httpapi`.
    pub fn upload_url(&self) -> String {
        format!("{}/2/httpapi", self.server.base)
    }

    /// Every accepted event, repeated insert_ids included.
    pub fn received_raw(&self) -> Vec<Value> {
        self.state.lock().expect("amplitude").raw.clone()
    }
}

impl VendorFake for FakeAmplitude {
    fn script(&self) -> &Script {
        &self.script
    }

    /// The events Amplitude keeps: an insert_id repeated within 7 days is ignored.
    fn stored(&self) -> Vec<Value> {
        self.state.lock().expect("amplitude").events.clone()
    }
}

fn error(status: StatusCode, message: &str, extra: Value) -> Response {
    let mut body = json!({"code": status.as_u16(), "error": message});
    body.as_object_mut()
        .expect("object")
        .extend(extra.as_object().cloned().unwrap_or_default());
    harness::json(status, &body)
}

/// 429 naming the throttled events and their users and devices.
fn throttled(events: &Value, indexes: &[usize]) -> Response {
    let (mut users, mut devices) = (Map::new(), Map::new());
    for e in indexes.iter().map(|i| &events[*i]) {
        if let Some(u) = e["user_id"].as_str() {
            users.insert(u.to_owned(), json!(31));
        }
        if let Some(d) = e["device_id"].as_str() {
            devices.insert(d.to_owned(), json!(31));
        }
    }
    let extra = json!({"eps_threshold": 30, "throttled_devices": devices, "throttled_users": users,
                       "throttled_events": indexes});
    error(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests for some devices and users",
        extra,
    )
}

/// Adds event `index` under `field` in one of the 400's maps.
fn list(errors: &mut Map<String, Value>, map: &str, field: &str, index: usize) {
    let entry = errors.entry(map.to_owned()).or_insert_with(|| json!({}));
    let indexes = entry
        .as_object_mut()
        .expect("map")
        .entry(field.to_owned())
        .or_insert_with(|| json!([]));
    indexes.as_array_mut().expect("indexes").push(json!(index));
}

fn check_event(errors: &mut Map<String, Value>, i: usize, event: &Value, min_id: usize) {
    if event["event_type"].as_str().is_none_or(str::is_empty) {
        list(errors, "events_with_missing_fields", "event_type", i);
    }
    let ids = ["user_id", "device_id"].map(|k| event[k].as_str().filter(|s| !s.is_empty()));
    if ids.iter().all(Option::is_none) {
        list(errors, "events_with_missing_fields", "user_id", i);
        list(errors, "events_with_missing_fields", "device_id", i);
    }
    for (field, id) in ["user_id", "device_id"].into_iter().zip(ids) {
        if id.is_some_and(|id| id.chars().count() < min_id) {
            list(errors, "events_with_invalid_id_lengths", field, i);
        }
    }
    if ids[1] == Some(ZERO_DEVICE) {
        list(errors, "events_with_invalid_fields", "device_id", i);
    }
    if !(event["time"].is_null() || event["time"].is_i64()) {
        list(errors, "events_with_invalid_fields", "time", i);
    }
}

async fn upload(State((script, state)): State<(Script, Shared)>, headers: HeaderMap, body: Bytes) -> Response {
    let bad = |message: &str, extra: Value| error(StatusCode::BAD_REQUEST, message, extra);
    if harness::media_type(&headers).as_deref() != Some("application/json") {
        return bad("Invalid Content-Type: expected application/json", json!({}));
    }
    if body.len() > MAX_BYTES {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large", json!({}));
    }
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(&body) else {
        return bad("Invalid JSON request body", json!({}));
    };
    let missing = |field: &str| bad("Request missing required field", json!({"missing_field": field}));
    match request.get("api_key").and_then(Value::as_str) {
        None | Some("") => return missing("api_key"),
        Some(API_KEY) => {}
        Some(other) => return bad(&format!("Invalid API key: {other}"), json!({})),
    }
    let Some(events) = request
        .get("events")
        .and_then(Value::as_array)
        .filter(|e| !e.is_empty())
    else {
        return missing("events");
    };
    if events.len() > MAX_EVENTS {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "Payload too large", json!({}));
    }
    let min_id = request
        .get("options")
        .and_then(|o| o["min_id_length"].as_u64())
        .unwrap_or(5) as usize;
    let mut errors = Map::new();
    let mut flaky = Vec::new();
    for (i, event) in events.iter().enumerate() {
        check_event(&mut errors, i, event, min_id);
        match script.verdict(&event.to_string()) {
            Verdict::Accept => {}
            Verdict::Refuse => list(&mut errors, "events_with_invalid_fields", "event_properties", i),
            Verdict::FailOnce => flaky.push(i),
        }
    }
    if !errors.is_empty() {
        let message = if errors.contains_key("events_with_missing_fields") {
            "Request missing required field"
        } else if errors.contains_key("events_with_invalid_id_lengths") {
            "Invalid id length for user_id or device_id"
        } else {
            "Invalid field values on some events"
        };
        return bad(message, Value::Object(errors));
    }
    if !flaky.is_empty() {
        return throttled(&Value::Array(events.clone()), &flaky);
    }
    let now = harness::now_millis();
    let mut store = state.lock().expect("amplitude");
    for event in events {
        store.raw.push(event.clone());
        if let Some(id) = event["insert_id"].as_str() {
            if store
                .insert_ids
                .get(id)
                .is_some_and(|seen| now - seen < DEDUP_WINDOW_MS)
            {
                continue;
            }
            store.insert_ids.insert(id.to_owned(), now);
        }
        store.events.push(event.clone());
    }
    let ok = json!({"code": 200, "events_ingested": events.len(), "payload_size_bytes": body.len(),
                    "server_upload_time": now});
    harness::json(StatusCode::OK, &ok)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn upload(fake: &FakeAmplitude, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(fake.upload_url())
            .json(&body)
            .send()
            .await
            .expect("send");
        (r.status().as_u16(), r.json().await.expect("json"))
    }

    fn event(user: &str, insert_id: &str) -> Value {
        json!({"event_type": "lead_captured", "user_id": user, "insert_id": insert_id, "time": 1_750_000_000_000i64})
    }

    #[tokio::test]
    async fn ingests_dedups_and_refuses_whole_batches() {
        let fake = FakeAmplitude::start().await;
        let batch = json!({"api_key": API_KEY, "events": [event("user-1", "e-1"), event("user-2", "e-2")]});
        let (status, body) = upload(&fake, batch.clone()).await;
        assert_eq!(
            (status, body["code"].as_u64(), body["events_ingested"].as_u64()),
            (200, Some(200), Some(2))
        );
        upload(&fake, batch).await;
        assert_eq!((fake.received_raw().len(), fake.stored().len()), (4, 2));

        let bad =
            json!({"api_key": API_KEY, "events": [event("user-3", "e-3"), {"user_id": "user-4"}, event("u", "e-5")]});
        let (status, body) = upload(&fake, bad).await;
        assert_eq!(status, 400);
        assert_eq!(body["events_with_missing_fields"]["event_type"], json!([1]));
        assert_eq!(body["events_with_invalid_id_lengths"]["user_id"], json!([2]));
        assert_eq!(fake.stored().len(), 2, "a 400 ingests nothing");

        let (status, body) = upload(&fake, json!({"api_key": "nope", "events": [event("user-1", "e-9")]})).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("Invalid API key: nope")));
        let too_many = json!({"api_key": API_KEY, "events": vec![event("user-1", "x"); 2001]});
        assert_eq!(upload(&fake, too_many).await.0, 413);
    }

    #[tokio::test]
    async fn throttles_name_the_events() {
        let fake = FakeAmplitude::start().await;
        fake.script().fail_once("e-2");
        let body = json!({"api_key": API_KEY, "events": [event("user-1", "e-1"), event("user-2", "e-2")]});
        let (status, answer) = upload(&fake, body.clone()).await;
        assert_eq!((status, answer["throttled_events"].clone()), (429, json!([1])));
        assert_eq!(answer["throttled_users"], json!({"user-2": 31}));
        assert_eq!(upload(&fake, body).await.0, 200);
        assert_eq!(fake.stored().len(), 2);
    }
}
