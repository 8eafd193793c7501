//! A fake GA4 Measurement Protocol: `/mp/collect` and its validation server
//! `/debug/mp/collect`, answered as Google documents them — which means the collect endpoint
//! never says no.
//!
//! Sources:
//! - Sending events — <https://developers.google.com/analytics/devguides/collection/protocol/ga4/sending-events>:
//!   `POST /mp/collect?measurement_id=G-…&api_secret=…` (apps: `firebase_app_id`), JSON body
//!   `{"client_id" (apps: "app_instance_id"), "user_id"?, "timestamp_micros"?,
//!   "user_properties"?, "events": [{"name", "params"?}]}`. Limits: 25 events a request, 25
//!   parameters an event, 25 user properties; event and parameter names up to 40 characters,
//!   letters, digits and `_`, starting with a letter; parameter values up to 100 characters;
//!   user property names 24, values 36; reserved names and the prefixes `_`, `firebase_`, `ga_`,
//!   `google_`, `gtag.`; a body up to 130 kB; events backdated up to 72 hours. Reserved event
//!   names — <https://developers.google.com/analytics/devguides/collection/protocol/ga4/reference#reserved_names>.
//! - Validating events — <https://developers.google.com/analytics/devguides/collection/protocol/ga4/validating-events>:
//!   the Measurement Protocol "does not return HTTP error codes, even if an event is malformed";
//!   the validation server answers `{"validationMessages": [{"fieldPath", "description",
//!   "validationCode"}]}` (codes `VALUE_INVALID`, `VALUE_REQUIRED`, `NAME_INVALID`,
//!   `NAME_RESERVED`, `VALUE_OUT_OF_BOUNDS`, `EXCEEDED_MAX_ENTITIES`, `NAME_DUPLICATED`), records
//!   nothing, and does not check `api_secret`.
//!
//! So: `/mp/collect` answers `204 No Content` to everything — a wrong `api_secret`, an invalid
//! request or an invalid event is dropped silently ([`FakeGa4::dropped`] says why); there is no
//! 401 to test. The research notes found no published rate limit; the injected throttle is a
//! bare 429 and an outage a 500 (neither documented). `refuse` is a validation failure (dropped
//! in production, a message on the validation server); `fail_once` a 500 once.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};

use super::harness::{self, Contract, FakeServer, Script, VendorFake, Verdict};

pub const MEASUREMENT_ID: &str = "G-NECTAR0001";
pub const API_SECRET: &str = "nEcTaRfAkEaPiSeCrEt01";
const RESERVED_EVENTS: &str = "ad_activeview ad_click ad_exposure ad_impression ad_query ad_reward adunit_exposure \
    app_background app_clear_data app_exception app_install app_remove app_store_refund app_store_subscription_cancel \
    app_store_subscription_convert app_store_subscription_renew app_update app_upgrade dynamic_link_app_open \
    dynamic_link_app_update dynamic_link_first_open error firebase_campaign firebase_in_app_message_action \
    firebase_in_app_message_dismiss firebase_in_app_message_impression first_open first_visit in_app_purchase \
    notification_dismiss notification_foreground notification_open notification_receive notification_send \
    os_update screen_view session_start user_engagement";
const RESERVED_PREFIXES: [&str; 5] = ["_", "firebase_", "ga_", "google_", "gtag."];

#[derive(Debug, Default)]
struct Store {
    events: Vec<Value>,
    dropped: Vec<String>,
}

type Shared = Arc<Mutex<Store>>;

/// A running fake Measurement Protocol.
#[derive(Debug, Clone)]
pub struct FakeGa4 {
    pub server: FakeServer,
    script: Script,
    state: Shared,
}

impl FakeGa4 {
    pub async fn start() -> Self {
        let script = Script::new();
        let state = Shared::default();
        let router = Router::new()
            .route("/mp/collect", post(collect))
            .route("/debug/mp/collect", post(validate))
            .with_state((script.clone(), state.clone()));
        let contract = Contract {
            is_write: |_, path| path == "/mp/collect",
            server_error: || StatusCode::INTERNAL_SERVER_ERROR.into_response(),
            throttled: |_, _| StatusCode::TOO_MANY_REQUESTS.into_response(),
        };
        let server = FakeServer::start(router, &script, contract).await;
        Self { server, script, state }
    }

    /// The collection host (`https://www.google-analytics.com` in production).
    pub fn base_url(&self) -> &str {
        &self.server.base
    }

    /// `…/mp/collect?measurement_id=…&api_secret=…` with the valid credentials.
    pub fn collect_url(&self) -> String {
        format!(
            "{}/mp/collect?measurement_id={MEASUREMENT_ID}&api_secret={API_SECRET}",
            self.server.base
        )
    }

    /// Why each silently dropped request or event was dropped.
    pub fn dropped(&self) -> Vec<String> {
        self.state.lock().expect("ga4").dropped.clone()
    }
}

impl VendorFake for FakeGa4 {
    fn script(&self) -> &Script {
        &self.script
    }

    /// The events Analytics recorded, each with the request's `client_id`, `user_id` and
    /// `timestamp_micros`.
    fn stored(&self) -> Vec<Value> {
        self.state.lock().expect("ga4").events.clone()
    }
}

fn message(path: &str, code: &str, description: &str) -> Value {
    json!({"fieldPath": path, "description": description, "validationCode": code})
}

fn check_name(path: &str, name: Option<&str>, max: usize, reserved: &str) -> Option<Value> {
    let Some(name) = name.filter(|n| !n.is_empty()) else {
        return Some(message(path, "VALUE_REQUIRED", "A name is required."));
    };
    let pattern = name.starts_with(|c: char| c.is_ascii_alphabetic())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if RESERVED_PREFIXES.iter().any(|p| name.starts_with(p)) || reserved.split_whitespace().any(|r| r == name) {
        Some(message(path, "NAME_RESERVED", &format!("{name} is a reserved name.")))
    } else if !pattern || name.chars().count() > max {
        Some(message(
            path,
            "NAME_INVALID",
            &format!("{name} must be at most {max} letters, digits or underscores, starting with a letter."),
        ))
    } else {
        None
    }
}

fn check_map(
    messages: &mut Vec<Value>,
    path: &str,
    map: Option<&Map<String, Value>>,
    name_max: usize,
    value_max: usize,
) {
    let Some(map) = map else { return };
    if map.len() > 25 {
        messages.push(message(
            path,
            "EXCEEDED_MAX_ENTITIES",
            &format!("{path} can have at most 25 entries."),
        ));
    }
    for (key, value) in map {
        let at = format!("{path}.{key}");
        messages.extend(check_name(&at, Some(key), name_max, ""));
        let text = value.get("value").unwrap_or(value).as_str().unwrap_or_default();
        if text.chars().count() > value_max {
            messages.push(message(
                &at,
                "VALUE_OUT_OF_BOUNDS",
                &format!("Value must be at most {value_max} characters."),
            ));
        }
    }
}

/// The validation server's messages for a request: request-level ones, and per event.
fn check(query: &Map<String, Value>, body: &[u8], script: &Script) -> (Vec<Value>, Vec<Vec<Value>>) {
    let Ok(Value::Object(payload)) = serde_json::from_slice::<Value>(body) else {
        return (
            vec![message("", "VALUE_INVALID", "The body must be a JSON object.")],
            vec![],
        );
    };
    let mut request = Vec::new();
    if body.len() > 130_000 {
        request.push(message("", "VALUE_OUT_OF_BOUNDS", "The body must be at most 130 kB."));
    }
    let id_field = if query.contains_key("firebase_app_id") {
        "app_instance_id"
    } else {
        "client_id"
    };
    if payload.get(id_field).and_then(Value::as_str).is_none_or(str::is_empty) {
        request.push(message(id_field, "VALUE_REQUIRED", &format!("{id_field} is required.")));
    }
    if let Some(t) = payload.get("timestamp_micros").and_then(Value::as_i64)
        && t < (harness::now_millis() - 72 * 3_600_000) * 1000
    {
        request.push(message(
            "timestamp_micros",
            "VALUE_OUT_OF_BOUNDS",
            "Events can be backdated up to 72 hours.",
        ));
    }
    check_map(
        &mut request,
        "user_properties",
        payload.get("user_properties").and_then(Value::as_object),
        24,
        36,
    );
    let events = payload
        .get("events")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    if events.is_empty() {
        request.push(message("events", "VALUE_REQUIRED", "At least one event is required."));
    } else if events.len() > 25 {
        request.push(message(
            "events",
            "EXCEEDED_MAX_ENTITIES",
            "A request can have at most 25 events.",
        ));
    }
    let per_event = events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            let mut messages: Vec<Value> = check_name(
                &format!("events[{i}].name"),
                event["name"].as_str(),
                40,
                RESERVED_EVENTS,
            )
            .into_iter()
            .collect();
            check_map(
                &mut messages,
                &format!("events[{i}].params"),
                event["params"].as_object(),
                40,
                100,
            );
            if messages.is_empty() && script.refused(&event.to_string()) {
                messages.push(message(
                    &format!("events[{i}]"),
                    "VALUE_INVALID",
                    "Refused by the test script.",
                ));
            }
            messages
        })
        .collect();
    (request, per_event)
}

type Ctx = State<(Script, Shared)>;

async fn validate(State((script, _)): Ctx, Query(query): Query<Map<String, Value>>, body: Bytes) -> Response {
    let (mut messages, per_event) = check(&query, &body, &script);
    messages.extend(per_event.into_iter().flatten());
    harness::json(StatusCode::OK, &json!({"validationMessages": messages}))
}

async fn collect(
    State((script, state)): Ctx,
    Query(query): Query<Map<String, Value>>,
    _: HeaderMap,
    body: Bytes,
) -> Response {
    let credentials = query.get("api_secret") == Some(&json!(API_SECRET))
        && query.get("measurement_id") == Some(&json!(MEASUREMENT_ID));
    let (request, per_event) = check(&query, &body, &script);
    let mut store = state.lock().expect("ga4");
    if !credentials || !request.is_empty() {
        let why = if credentials {
            request[0]["description"].to_string()
        } else {
            "wrong measurement_id or api_secret".into()
        };
        store.dropped.push(why);
        return StatusCode::NO_CONTENT.into_response();
    }
    if script.verdict(&String::from_utf8_lossy(&body)) == Verdict::FailOnce {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }
    let payload: Value = serde_json::from_slice(&body).unwrap_or_default();
    for (event, messages) in payload["events"].as_array().into_iter().flatten().zip(per_event) {
        if let Some(m) = messages.first() {
            store
                .dropped
                .push(m["description"].as_str().unwrap_or_default().to_owned());
            continue;
        }
        let mut recorded = event.clone();
        for key in ["client_id", "user_id", "timestamp_micros"] {
            recorded[key] = payload[key].clone();
        }
        store.events.push(recorded);
    }
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(url: String, body: &Value) -> reqwest::Response {
        reqwest::Client::new().post(url).json(body).send().await.expect("send")
    }

    #[tokio::test]
    async fn collect_never_refuses_and_the_validation_server_explains() {
        let fake = FakeGa4::start().await;
        let body = json!({"client_id": "123.456", "events": [{"name": "generate_lead", "params": {"value": 3}},
                                                              {"name": "session_start"}]});
        assert_eq!(post(fake.collect_url(), &body).await.status(), 204);
        assert_eq!(fake.stored().len(), 1, "the reserved name is dropped silently");
        assert_eq!(fake.stored()[0]["client_id"], "123.456");

        let wrong = fake.collect_url().replace(API_SECRET, "wrong");
        assert_eq!(post(wrong, &body).await.status(), 204, "no 401: GA4 drops it");
        assert_eq!(fake.stored().len(), 1);
        assert_eq!(fake.dropped().len(), 2);

        let debug = fake
            .collect_url()
            .replace("/mp/", "/debug/mp/")
            .replace(API_SECRET, "wrong");
        let answer: Value = post(debug, &body).await.json().await.expect("json");
        assert_eq!(answer["validationMessages"][0]["validationCode"], "NAME_RESERVED");
        assert_eq!(answer["validationMessages"][0]["fieldPath"], "events[1].name");
        assert_eq!(fake.stored().len(), 1, "the validation server records nothing");

        fake.script().throttle_next(1, 1);
        assert_eq!(post(fake.collect_url(), &body).await.status(), 429);
    }
}
