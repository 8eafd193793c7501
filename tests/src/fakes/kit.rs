//! A fake Kit (ConvertKit) API v4: the subscriber upsert and tagging calls, answered as Kit
//! documents them.
//!
//! Sources:
//! - Create a subscriber — <https://developers.kit.com/api-reference/subscribers/create-a-subscriber>:
//!   `POST /v4/subscribers` `{"email_address", "first_name"?, "state"?, "fields"?}` "behaves as an
//!   upsert": a new address is created (201), a known one has its first name and fields updated
//!   (200); changing `state` this way is not supported; custom fields that do not exist in the
//!   account are ignored, not refused (the answer lists them in `warnings`); at most 140 fields.
//!   Answer `{"subscriber": {"id", "first_name", "email_address", "state", "created_at",
//!   "fields"}}`.
//! - Tag a subscriber — <https://developers.kit.com/api-reference/tags/tag-a-subscriber>:
//!   `POST /v4/tags/{tag_id}/subscribers/{subscriber_id}` (201 newly tagged, 200 already tagged),
//!   and by e-mail `POST /v4/tags/{tag_id}/subscribers` `{"email_address"}`.
//! - Auth — <https://developers.kit.com/api-reference/authentication>: `X-Kit-Api-Key` (or an OAuth
//!   `Authorization: Bearer`, not accepted by this fake); errors are `{"errors": [..]}`; 401 for a
//!   missing or wrong key, 422 for bad data, 404 for unknown ids
//!   (<https://developers.kit.com/api-reference/response-codes>).
//! - Rate limits — <https://developers.kit.com/api-reference/rate-limits>: 120 requests a minute
//!   per API key; a 429's body is the plain text `Retry later`, with no `Retry-After` header.
//!
//! The fake's wording: the 401 and 404 texts. Injections: outage 500; `refuse` → 422 "Email
//! address is invalid"; `fail_once` → 500 once.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Map, Value, json};

use super::harness::{self, Contract, FakeServer, Script, VendorFake, Verdict};

pub const API_KEY: &str = "kit_0f1e2d3c4b5a69788796a5b4c3d2e1f0";
/// The account's one tag.
pub const TAG_ID: u64 = 4_242;
/// The account's custom fields (by key); others are ignored.
pub const FIELDS: [&str; 3] = ["last_name", "company", "nectar_event_id"];
const STATES: [&str; 5] = ["active", "cancelled", "bounced", "complained", "inactive"];

#[derive(Debug, Default)]
struct Store {
    subscribers: Vec<Value>,
    /// (tag id, subscriber id)
    taggings: Vec<(u64, u64)>,
}

type Shared = Arc<Mutex<Store>>;

/// A running fake Kit API.
#[derive(Debug, Clone)]
pub struct FakeKit {
    pub server: FakeServer,
    script: Script,
    state: Shared,
}

impl FakeKit {
    pub async fn start() -> Self {
        let script = Script::new();
        let state = Shared::default();
        let router = Router::new()
            .route("/v4/subscribers", post(upsert))
            .route("/v4/tags/{tag}/subscribers", post(tag_by_email))
            .route("/v4/tags/{tag}/subscribers/{id}", post(tag_by_id))
            .with_state((script.clone(), state.clone()));
        let contract = Contract {
            is_write: harness::non_get_writes,
            server_error: || errors(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error"),
            throttled: |_, _| {
                (
                    StatusCode::TOO_MANY_REQUESTS,
                    [(header::CONTENT_TYPE, "text/plain")],
                    "Retry later",
                )
                    .into_response()
            },
        };
        let server = FakeServer::start(router, &script, contract).await;
        Self { server, script, state }
    }

    /// The API host (`https://api.kit.com` in production).
    pub fn base_url(&self) -> &str {
        &self.server.base
    }

    /// The subscriber ids tagged with `tag_id`.
    pub fn tagged(&self, tag_id: u64) -> Vec<u64> {
        let store = self.state.lock().expect("kit");
        store
            .taggings
            .iter()
            .filter(|(t, _)| *t == tag_id)
            .map(|(_, s)| *s)
            .collect()
    }
}

impl VendorFake for FakeKit {
    fn script(&self) -> &Script {
        &self.script
    }

    /// The subscribers, one per e-mail address, each with its `tag_ids`.
    fn stored(&self) -> Vec<Value> {
        let store = self.state.lock().expect("kit");
        let tags = |id: &Value| {
            store
                .taggings
                .iter()
                .filter(|(_, s)| json!(s) == *id)
                .map(|(t, _)| *t)
                .collect::<Vec<_>>()
        };
        store
            .subscribers
            .iter()
            .map(|s| json!({"subscriber": s, "tag_ids": tags(&s["id"])}))
            .collect()
    }
}

fn errors(status: StatusCode, message: &str) -> Response {
    harness::json(status, &json!({"errors": [message]}))
}

fn check_key(headers: &HeaderMap) -> Option<Response> {
    match headers.get("x-kit-api-key").and_then(|v| v.to_str().ok()) {
        Some(API_KEY) => None,
        Some(_) => Some(errors(StatusCode::UNAUTHORIZED, "The API key is invalid")),
        None => Some(errors(StatusCode::UNAUTHORIZED, "API Key not present")),
    }
}

fn valid_email(email: &str) -> bool {
    let (local, domain) = email.split_once('@').unwrap_or_default();
    !local.is_empty() && domain.contains('.') && !email.contains(char::is_whitespace)
}

type Ctx = State<(Script, Shared)>;

async fn upsert(State((script, state)): Ctx, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = check_key(&headers) {
        return r;
    }
    let Ok(Value::Object(input)) = serde_json::from_slice::<Value>(&body) else {
        return errors(StatusCode::UNPROCESSABLE_ENTITY, "Request body is not valid JSON");
    };
    let email = input
        .get("email_address")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim()
        .to_lowercase();
    if !valid_email(&email) {
        return errors(StatusCode::UNPROCESSABLE_ENTITY, "Email address is invalid");
    }
    if let Some(s) = input.get("state").filter(|s| !s.is_null())
        && !s.as_str().is_some_and(|s| STATES.contains(&s))
    {
        return errors(StatusCode::UNPROCESSABLE_ENTITY, "State is not included in the list");
    }
    let given = input
        .get("fields")
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    if given.len() > 140 {
        return errors(
            StatusCode::UNPROCESSABLE_ENTITY,
            "A maximum of 140 custom fields can be updated at a time",
        );
    }
    match script.verdict(&String::from_utf8_lossy(&body)) {
        Verdict::Refuse => return errors(StatusCode::UNPROCESSABLE_ENTITY, "Email address is invalid"),
        Verdict::FailOnce => return errors(StatusCode::INTERNAL_SERVER_ERROR, "Internal server error"),
        Verdict::Accept => {}
    }
    let (known, unknown): (Map<String, Value>, Map<String, Value>) =
        given.into_iter().partition(|(k, _)| FIELDS.contains(&k.as_str()));
    let mut store = state.lock().expect("kit");
    let found = store
        .subscribers
        .iter()
        .position(|s| s["email_address"] == email.as_str());
    let status = if found.is_some() {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    if found.is_none() {
        let id = store.subscribers.len() as u64 + 1001;
        let fields: Map<String, Value> = FIELDS.iter().map(|f| (f.to_string(), Value::Null)).collect();
        let state = input.get("state").and_then(Value::as_str).unwrap_or("active");
        let created_at = harness::iso8601(harness::now_millis());
        store.subscribers.push(
            json!({"id": id, "first_name": null, "email_address": email, "state": state,
                                      "created_at": created_at, "fields": fields}),
        );
    }
    let index = found.unwrap_or(store.subscribers.len() - 1);
    let subscriber = &mut store.subscribers[index];
    if let Some(first_name) = input.get("first_name") {
        subscriber["first_name"] = first_name.clone();
    }
    subscriber["fields"].as_object_mut().expect("fields").extend(known);
    let mut answer = json!({"subscriber": subscriber});
    if !unknown.is_empty() {
        answer["warnings"] = unknown
            .keys()
            .map(|k| json!(format!("Custom field '{k}' does not exist and was ignored")))
            .collect();
    }
    harness::json(status, &answer)
}

/// Tags a subscriber: 201 when new, 200 when it already had the tag.
fn tag(state: &Shared, tag: &str, find: impl Fn(&Value) -> bool) -> Response {
    let mut store = state.lock().expect("kit");
    let Some(subscriber) = store.subscribers.iter().find(|s| find(s)).cloned() else {
        return errors(StatusCode::NOT_FOUND, "Not Found");
    };
    if tag.parse() != Ok(TAG_ID) {
        return errors(StatusCode::NOT_FOUND, "Not Found");
    }
    let pair = (TAG_ID, subscriber["id"].as_u64().expect("id"));
    let status = if store.taggings.contains(&pair) {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    if status == StatusCode::CREATED {
        store.taggings.push(pair);
    }
    let mut answer = subscriber;
    answer["tagged_at"] = json!(harness::iso8601(harness::now_millis()));
    harness::json(status, &json!({"subscriber": answer}))
}

async fn tag_by_id(State((_, state)): Ctx, Path((tag_id, id)): Path<(String, String)>, headers: HeaderMap) -> Response {
    check_key(&headers).unwrap_or_else(|| {
        tag(&state, &tag_id, |s| {
            s["id"].as_u64().is_some_and(|s| s.to_string() == id)
        })
    })
}

async fn tag_by_email(State((_, state)): Ctx, Path(tag_id): Path<String>, headers: HeaderMap, body: Bytes) -> Response {
    if let Some(r) = check_key(&headers) {
        return r;
    }
    let email = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b["email_address"].as_str().map(str::to_lowercase));
    match email {
        Some(email) if valid_email(&email) => tag(&state, &tag_id, |s| s["email_address"] == email.as_str()),
        _ => errors(StatusCode::UNPROCESSABLE_ENTITY, "Email address is invalid"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(url: String, key: &str, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(url)
            .header("x-kit-api-key", key)
            .json(&body)
            .send()
            .await
            .expect("send");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    #[tokio::test]
    async fn upserts_by_email_tags_and_answers_as_kit() {
        let fake = FakeKit::start().await;
        let url = format!("{}/v4/subscribers", fake.base_url());
        let body = json!({"email_address": "Lead@Example.com", "first_name": "Ada", "fields": {"company": "Acme", "shoe": "9"}});
        let (status, answer) = post(url.clone(), API_KEY, body.clone()).await;
        assert_eq!(
            (status, answer["subscriber"]["fields"]["company"].as_str()),
            (201, Some("Acme"))
        );
        assert_eq!(answer["warnings"].as_array().map(Vec::len), Some(1));
        assert_eq!(post(url.clone(), API_KEY, body).await.0, 200);
        let id = fake.stored()[0]["subscriber"]["id"].as_u64().expect("id");
        let tag_url = format!("{}/v4/tags/{TAG_ID}/subscribers/{id}", fake.base_url());
        assert_eq!(post(tag_url.clone(), API_KEY, json!({})).await.0, 201);
        assert_eq!(post(tag_url, API_KEY, json!({})).await.0, 200);
        assert_eq!((fake.stored().len(), fake.tagged(TAG_ID)), (1, vec![id]));

        let (status, answer) = post(url.clone(), API_KEY, json!({"email_address": "nope"})).await;
        assert_eq!((status, answer), (422, json!({"errors": ["Email address is invalid"]})));
        assert_eq!(
            post(url.clone(), "wrong", json!({"email_address": "a@b.co"})).await.0,
            401
        );

        fake.script().throttle_next(1, 9);
        let r = reqwest::Client::new()
            .post(url)
            .header("x-kit-api-key", API_KEY)
            .json(&json!({"email_address": "a@b.co"}))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 429);
        assert!(r.headers().get("retry-after").is_none());
        assert_eq!(r.text().await.expect("text"), "Retry later");
    }
}
