//! A fake Pipedrive API: adding a Person (API v2) and the current-user call a sink uses as its
//! start check, answered as Pipedrive documents them (its docs, and its official clients, which
//! are generated from its OpenAPI spec).
//!
//! - Add a person — <https://developers.pipedrive.com/docs/api/v1/Persons>,
//!   <https://github.com/pipedrive/client-nodejs/blob/master/src/versions/v2/models/add-person-request.ts>,
//!   <https://github.com/pipedrive/client-nodejs/blob/master/src/versions/v2/api/persons-api.ts>,
//!   <https://github.com/pipedrive/client-php/blob/master/lib/versions/v2/Api/PersonsApi.php>,
//!   <https://github.com/pipedrive/client-php/blob/master/docs/versions/v2/Model/PersonItem.md>:
//!   `POST /api/v2/persons`, JSON `{"name"?, "owner_id"?, "org_id"?, "add_time"?, "update_time"?,
//!   "emails"?: [{"value", "primary", "label"}], "phones"? (same), "visible_to"?, "label_ids"?,
//!   "marketing_status"? (no_consent|unsubscribed|subscribed|archived), "custom_fields"?: {<40-char
//!   hash>: value}}` → **200** `{"success": true, "data": <person>}`. Where the docs differ from the
//!   brief: v2 does **not** require `name` (its schema does require a deal's `title`:
//!   <https://github.com/pipedrive/client-nodejs/blob/master/src/versions/v2/models/add-deal-request.ts>),
//!   so a nameless person is accepted; success is 200, not 201; v1 `POST /v1/persons` (name required, `email`,
//!   top-level custom fields, 201) is deprecated in the clients
//!   (<https://github.com/pipedrive/client-php/blob/master/lib/versions/v1/Api/PersonsApi.php>), so
//!   it is not served. No idempotency key exists: a resend is a second Person ([`VendorFake::stored`]
//!   keeps both).
//! - <https://pipedrive.readme.io/docs/pipedrive-api-v2-migration-guide>: v2 only under `/api/v2/`
//!   (v1 under `/api/v1/` and `/v1/`); stricter validation — numbers are not coerced from strings,
//!   booleans are only `true`/`false`; custom fields live in `custom_fields`; times are RFC 3339.
//! - Current user — <https://github.com/pipedrive/client-php/blob/master/docs/versions/v1/Api/UsersApi.md>:
//!   `GET /v1/users/me` → the user with the company's id, name and domain (no v2 equivalent).
//! - Auth — <https://pipedrive.readme.io/docs/core-api-concepts-authentication>: now "must be
//!   provided in the x-api-token header for all requests"; an earlier version said the `api_token`
//!   query parameter (on a v1 path). The fake takes the header, and the query parameter on v1 only.
//! - Errors — <https://pipedrive.readme.io/docs/core-api-concepts-responses>: `{"success": false,
//!   "error", "error_info", "data": null, "additional_data": null}`;
//!   <https://pipedrive.readme.io/docs/core-api-concepts-http-status-codes>: 400 "Request not
//!   understood", 401 "Invalid API token", 429 "Rate limit has been exceeded", 500.
//! - Rate limiting — <https://pipedrive.readme.io/docs/core-api-concepts-rate-limiting>: per token,
//!   2-second windows (40 requests on the Advanced plan); every answer has `x-ratelimit-limit`,
//!   `x-ratelimit-remaining`, `x-ratelimit-reset` (seconds left); over it, 429 with a JSON body.
//!
//! Not confirmed, so the fake's own: every `error` text; the 429 body (cut off in the copy read):
//! the error shape with "Too Many Requests"; `Retry-After` — not in the part of the page read (a
//! 429 pasted on <https://devcommunity.pipedrive.com/t/rate-limiting-issues/7462> has one), left
//! out so a client must honour `x-ratelimit-reset`; `x-daily-requests-left` (not sent); refusing keys outside
//! the documented v2 body (a v1 `email`, a top-level custom field); whether v2 takes `api_token` in
//! the query (refused). Injections: outage 500; `refuse` → 400; `fail_once` → 500 once.

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};

use super::harness::{self, Contract, FakeServer, Script, VendorFake, Verdict};

pub const API_TOKEN: &str = "659c9fddb16335e48cc67114694b52074e812e03";
/// The company subdomain: production answers at `https://nectar.pipedrive.com`.
pub const COMPANY_DOMAIN: &str = "nectar";
/// The token's user, the default owner of new persons.
pub const USER_ID: u64 = 1_201;
/// Requests per 2-second window (the documented Advanced-plan figure for an api_token).
pub const RATE_LIMIT: u32 = 40;
const INFO: &str = "Please check developers.pipedrive.com for more information about Pipedrive API.";

type Shared = Arc<Mutex<Vec<Value>>>;

/// A running fake Pipedrive.
#[derive(Debug, Clone)]
pub struct FakePipedrive {
    pub server: FakeServer,
    script: Script,
    persons: Shared,
}

impl FakePipedrive {
    pub async fn start() -> Self {
        let script = Script::new();
        let persons = Shared::default();
        let router = Router::new()
            .route("/api/v2/persons", post(add_person))
            .route("/api/v1/users/me", get(me))
            .route("/v1/users/me", get(me))
            .layer(axum::middleware::map_response(|r| async {
                limits(r, RATE_LIMIT - 1, 2)
            }))
            .with_state((script.clone(), persons.clone()));
        let contract = Contract {
            is_write: harness::non_get_writes,
            server_error: || error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
            throttled: |_, secs| limits(error(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests"), 0, secs),
        };
        let server = FakeServer::start(router, &script, contract).await;
        Self {
            server,
            script,
            persons,
        }
    }

    /// The API host (`https://{COMPANY_DOMAIN}.pipedrive.com` in production).
    pub fn base_url(&self) -> &str {
        &self.server.base
    }
}

impl VendorFake for FakePipedrive {
    fn script(&self) -> &Script {
        &self.script
    }

    /// Every Person created, one entry each, resends included, as answered in `data`.
    fn stored(&self) -> Vec<Value> {
        self.persons.lock().expect("pipedrive").clone()
    }
}

/// The documented rate-limit headers: the window's limit, what is left, seconds until it resets.
fn limits(mut response: Response, remaining: u32, reset: u64) -> Response {
    let h = response.headers_mut();
    h.insert("x-ratelimit-limit", RATE_LIMIT.into());
    h.insert("x-ratelimit-remaining", remaining.into());
    h.insert("x-ratelimit-reset", reset.into());
    response
}

fn error(status: StatusCode, message: &str) -> Response {
    let body = json!({"success": false, "error": message, "error_info": INFO, "data": null, "additional_data": null});
    harness::json(status, &body)
}

/// 401 unless the token is in `x-api-token` (or, where `query` allows, the `api_token` parameter).
fn unauthorized(headers: &HeaderMap, uri: &Uri, query: bool) -> Option<Response> {
    let mut pairs = uri.query().filter(|_| query).into_iter().flat_map(|q| q.split('&'));
    let from_query = pairs.find_map(|p| p.strip_prefix("api_token="));
    match headers.get("x-api-token").and_then(|v| v.to_str().ok()).or(from_query) {
        Some(API_TOKEN) => None,
        Some(_) => Some(error(StatusCode::UNAUTHORIZED, "Invalid API token")),
        None => Some(error(StatusCode::UNAUTHORIZED, "API token is missing")),
    }
}

/// Whether `v` has the type the documented v2 body field `key` takes (numbers are not coerced);
/// `None` when `key` is not a documented field.
fn valid(key: &str, v: &Value) -> Option<bool> {
    let item = |i: &Value| {
        i["value"].is_string()
            && i.get("primary").is_none_or(Value::is_boolean)
            && i.get("label").is_none_or(Value::is_string)
    };
    let marketing = ["no_consent", "unsubscribed", "subscribed", "archived"];
    Some(match key {
        "name" | "add_time" | "update_time" => v.is_string(),
        "owner_id" | "org_id" | "visible_to" => v.is_u64(),
        "emails" | "phones" => v.as_array().is_some_and(|a| a.iter().all(item)),
        "label_ids" => v.as_array().is_some_and(|a| a.iter().all(Value::is_u64)),
        "marketing_status" => marketing.contains(&v.as_str().unwrap_or_default()),
        "custom_fields" => v.is_object(),
        _ => return None,
    })
}

/// The person Pipedrive would create from `body` (its `id` still 0), or the validation message.
fn person(body: &[u8]) -> Result<Value, String> {
    let Ok(Value::Object(input)) = serde_json::from_slice::<Value>(body) else {
        return Err("Request body must be a JSON object".into());
    };
    let now = format!("{}Z", &harness::iso8601(harness::now_millis())[..19]);
    let mut person = json!({"id": 0, "name": null, "owner_id": USER_ID, "org_id": null, "add_time": now,
                            "update_time": now, "emails": [], "phones": [], "is_deleted": false, "visible_to": 3,
                            "label_ids": [], "custom_fields": {}});
    for (key, value) in input {
        match valid(&key, &value) {
            None => return Err(format!("Unknown field: {key}")),
            Some(false) => return Err(format!("Invalid value for field: {key}")),
            Some(true) => person[key] = value,
        }
    }
    Ok(person)
}

async fn add_person(
    State((script, persons)): State<(Script, Shared)>,
    headers: HeaderMap,
    uri: Uri,
    body: Bytes,
) -> Response {
    if let Some(r) = unauthorized(&headers, &uri, false) {
        return r;
    }
    let mut person = match person(&body) {
        Ok(p) => p,
        Err(message) => return error(StatusCode::BAD_REQUEST, &message),
    };
    match script.verdict(&String::from_utf8_lossy(&body)) {
        Verdict::Refuse => return error(StatusCode::BAD_REQUEST, "Validation failed: the person was refused"),
        Verdict::FailOnce => return error(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error"),
        Verdict::Accept => {}
    }
    let mut all = persons.lock().expect("pipedrive");
    person["id"] = json!(all.len() as u64 + 1);
    all.push(person.clone());
    harness::json(StatusCode::OK, &json!({"success": true, "data": person}))
}

async fn me(headers: HeaderMap, uri: Uri) -> Response {
    unauthorized(&headers, &uri, true).unwrap_or_else(|| {
        let user = json!({"id": USER_ID, "name": "Nectar Integration", "email": "integration@example.com",
                          "company_id": 7_001, "company_name": "Nectar", "company_domain": COMPANY_DOMAIN});
        harness::json(StatusCode::OK, &json!({"success": true, "data": user}))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERSONS: &str = "/api/v2/persons";

    async fn send(fake: &FakePipedrive, path: &str, token: &str, body: Value) -> (u16, HeaderMap, Value) {
        let mut r = reqwest::Client::new()
            .post(format!("{}{path}", fake.base_url()))
            .json(&body);
        if !token.is_empty() {
            r = r.header("x-api-token", token);
        }
        let r = r.send().await.expect("send");
        let (status, headers) = (r.status().as_u16(), r.headers().clone());
        (status, headers, r.json().await.unwrap_or(Value::Null))
    }

    async fn status(fake: &FakePipedrive, body: Value) -> u16 {
        send(fake, PERSONS, API_TOKEN, body).await.0
    }

    #[tokio::test]
    async fn creates_persons_and_keeps_resends() {
        let fake = FakePipedrive::start().await;
        let hash = "d4de1c1518b4531717c676029a45911c340390a6";
        let body = json!({"name": "Ada Lovelace", "emails": [{"value": "ada@example.com", "primary": true, "label": "work"}],
                          "custom_fields": {hash: "evt-1"}});
        let (code, _, answer) = send(&fake, PERSONS, API_TOKEN, body.clone()).await;
        assert!(code == 200 && answer["success"] == true && answer["data"]["id"] == 1);
        assert_eq!(status(&fake, body).await, 200);
        let stored = fake.stored();
        assert_eq!((stored.len(), &stored[1]["custom_fields"][hash]), (2, &json!("evt-1")));
    }

    #[tokio::test]
    async fn invalid_persons_are_400_and_a_nameless_one_is_not() {
        let fake = FakePipedrive::start().await;
        let (code, _, answer) = send(&fake, PERSONS, API_TOKEN, json!({"name": "A", "org_id": "5"})).await;
        let expected = json!({"success": false, "error": "Invalid value for field: org_id", "error_info": INFO,
                              "data": null, "additional_data": null});
        assert_eq!((code, answer), (400, expected));
        assert_eq!(status(&fake, json!({"email": "a@b.co"})).await, 400);
        fake.script().refuse("refuse-me");
        assert_eq!(status(&fake, json!({"name": "refuse-me"})).await, 400);
        assert!(fake.stored().is_empty());
        assert_eq!(status(&fake, json!({"org_id": 5})).await, 200);
    }

    #[tokio::test]
    async fn a_wrong_or_query_token_is_401() {
        let fake = FakePipedrive::start().await;
        let (code, _, answer) = send(&fake, PERSONS, "wrong", json!({"name": "A"})).await;
        assert_eq!((code, &answer["success"]), (401, &json!(false)));
        let path = format!("{PERSONS}?api_token={API_TOKEN}");
        assert_eq!(send(&fake, &path, "", json!({"name": "A"})).await.0, 401);
        let me = reqwest::Client::new().get(format!("{}/v1/users/me?api_token={API_TOKEN}", fake.base_url()));
        let answer: Value = me.send().await.expect("send").json().await.expect("json");
        assert_eq!(answer["data"]["company_domain"], COMPANY_DOMAIN);
    }

    #[tokio::test]
    async fn throttle_answers_the_documented_429() {
        let fake = FakePipedrive::start().await;
        fake.script().throttle_next(1, 2);
        let (code, headers, answer) = send(&fake, PERSONS, API_TOKEN, json!({"name": "A"})).await;
        assert_eq!((code, &answer["success"]), (429, &json!(false)));
        assert!(headers["x-ratelimit-remaining"] == "0" && headers["x-ratelimit-reset"] == "2");
        assert!(headers.get("retry-after").is_none() && fake.stored().is_empty());
    }
}
