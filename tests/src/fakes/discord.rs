//! A fake Discord: the webhook routes a notification sink calls, checked and answered as
//! Discord documents them.
//!
//! Sources (Discord's developer docs, read from `discord/discord-api-docs`):
//! - Execute Webhook `POST /webhooks/{webhook.id}/{webhook.token}` and Get Webhook with Token
//!   `GET` on the same path — <https://discord.com/developers/docs/resources/webhook#execute-webhook>:
//!   `wait` (boolean query string: `true`/`True`/`1`, default false; <https://discord.com/developers/docs/reference#boolean-query-strings>)
//!   — with it the answer is 200 and the created message, without it `204 No Content` ("when
//!   false a message that is not saved does not return an error"). At least one of `content`,
//!   `embeds`, `components`, `file`, `poll`; `content` up to 2000 characters; up to 10 embeds.
//!   Get Webhook with Token returns the webhook object without `user`. Both `/api/` and
//!   versioned `/api/v{N}/` paths are served.
//! - Embed limits — <https://discord.com/developers/docs/resources/message#embed-object-embed-limits>:
//!   title 256, description 4096, up to 25 fields (name 256, value 1024), footer text 2048,
//!   author name 256.
//! - Errors — <https://discord.com/developers/docs/topics/opcodes-and-status-codes#json>:
//!   `{"message", "code"}`; 10015 Unknown webhook (404), 50027 Invalid webhook token (401),
//!   50006 Cannot send an empty message, 50109 invalid JSON, 50035 Invalid Form Body with the
//!   nested `errors` object (`{"content": {"_errors": [{"code": "BASE_TYPE_MAX_LENGTH",
//!   "message": "Must be 2000 or fewer in length."}]}}`), 200000 blocked by automatic
//!   moderation (what [`Script::refuse`] answers). 502 means "wait a bit and retry" (what
//!   [`Script::fail_once`] answers); an outage answers 500.
//! - Rate limits — <https://discord.com/developers/docs/topics/rate-limits>: every answer carries
//!   `X-RateLimit-Limit`, `-Remaining`, `-Reset` (epoch seconds), `-Reset-After` (seconds,
//!   decimals), `-Bucket`; a 429 adds `Retry-After` and `X-RateLimit-Scope` and the JSON body
//!   `{"message": "You are being rate limited.", "retry_after": <float seconds>, "global": false}`.
//!
//! The message texts of 401/404 (`Invalid Webhook Token`, `Unknown Webhook`) are how Discord
//! words them in practice; the docs list only the codes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Map, Value, json};

use super::harness::{self, Contract, FakeServer, Script, VendorFake, Verdict};

pub const WEBHOOK_ID: &str = "1300000000000000001";
pub const WEBHOOK_TOKEN: &str = "Fk3-nectarFakeWebhookToken_0123456789abcdefghijklmnopqrstuvwxyzABCDEF";
pub const CHANNEL_ID: &str = "1300000000000000100";
pub const GUILD_ID: &str = "1300000000000000200";
pub const MAX_CONTENT: usize = 2000;
const DISCORD_EPOCH_MS: i64 = 1_420_070_400_000;
const INVALID_JSON: &str = "The request body contains invalid JSON.";
const BLOCKED: &str = "Message was blocked by automatic moderation";
const BUCKET: &str = "f1e2d3c4b5a6978800112233445566ff";

#[derive(Debug, Default)]
struct Store {
    messages: Vec<Value>,
    sequence: i64,
}

type Shared = Arc<Mutex<Store>>;

/// A running fake Discord.
#[derive(Debug, Clone)]
pub struct FakeDiscord {
    pub server: FakeServer,
    script: Script,
    state: Shared,
}

impl FakeDiscord {
    pub async fn start() -> Self {
        let script = Script::new();
        let state = Shared::default();
        let router = Router::new()
            .route("/api/webhooks/{id}/{token}", get(webhook).post(execute))
            .route("/api/{version}/webhooks/{id}/{token}", get(webhook).post(execute))
            .layer(axum::middleware::map_response(with_bucket))
            .with_state((script.clone(), state.clone()));
        let contract = Contract {
            is_write: |method, _| method == Method::POST,
            server_error: || error(StatusCode::INTERNAL_SERVER_ERROR, 0, "500: Internal Server Error"),
            throttled: |_, secs| rate_limited(secs as f64),
        };
        let server = FakeServer::start(router, &script, contract).await;
        Self { server, script, state }
    }

    pub fn base_url(&self) -> &str {
        &self.server.base
    }

    /// The webhook's URL, as Discord shows it (`…/api/webhooks/{id}/{token}`); add `?wait=true`.
    pub fn webhook_url(&self) -> String {
        format!("{}/api/webhooks/{WEBHOOK_ID}/{WEBHOOK_TOKEN}", self.server.base)
    }

    /// The messages posted to the webhook's channel.
    pub fn messages(&self) -> Vec<Value> {
        self.state.lock().expect("discord").messages.clone()
    }
}

impl VendorFake for FakeDiscord {
    fn script(&self) -> &Script {
        &self.script
    }

    fn stored(&self) -> Vec<Value> {
        self.messages()
    }
}

fn error(status: StatusCode, code: u64, message: &str) -> Response {
    harness::json(status, &json!({"message": message, "code": code}))
}

fn invalid_form_body(errors: Value) -> Response {
    let body = json!({"message": "Invalid Form Body", "code": 50035, "errors": errors});
    harness::json(StatusCode::BAD_REQUEST, &body)
}

/// The bucket headers Discord puts on every answer (a 429 brings its own).
async fn with_bucket(mut response: Response) -> Response {
    let h = response.headers_mut();
    if !h.contains_key("x-ratelimit-bucket") {
        let reset = harness::now_millis() as f64 / 1000.0 + 1.0;
        h.insert("x-ratelimit-limit", 5.into());
        h.insert("x-ratelimit-remaining", 4.into());
        h.insert(
            "x-ratelimit-reset",
            HeaderValue::from_str(&format!("{reset:.3}")).expect("header"),
        );
        h.insert("x-ratelimit-reset-after", HeaderValue::from_static("1.000"));
        h.insert("x-ratelimit-bucket", HeaderValue::from_static(BUCKET));
    }
    response
}

fn rate_limited(secs: f64) -> Response {
    let body = json!({"message": "You are being rate limited.", "retry_after": secs, "global": false});
    let mut r = harness::json(StatusCode::TOO_MANY_REQUESTS, &body);
    let reset = harness::now_millis() as f64 / 1000.0 + secs;
    for (name, value) in [
        ("retry-after", (secs.ceil() as u64).to_string()),
        ("x-ratelimit-limit", "5".into()),
        ("x-ratelimit-remaining", "0".into()),
        ("x-ratelimit-reset", format!("{reset:.3}")),
        ("x-ratelimit-reset-after", format!("{secs:.3}")),
        ("x-ratelimit-bucket", BUCKET.into()),
        ("x-ratelimit-scope", "user".into()),
    ] {
        r.headers_mut()
            .insert(name, HeaderValue::from_str(&value).expect("header"));
    }
    r
}

/// 400 for an unsupported API version, 404 for an unknown webhook, 401 for a wrong token.
#[allow(clippy::result_large_err)] // the refusal is the vendor's whole answer
fn check_webhook(path: &HashMap<String, String>) -> Result<(), Response> {
    if let Some(v) = path.get("version")
        && !matches!(v.as_str(), "v6" | "v7" | "v8" | "v9" | "v10")
    {
        return Err(error(StatusCode::BAD_REQUEST, 50041, "Invalid API version provided"));
    }
    if path["id"] != WEBHOOK_ID {
        return Err(error(StatusCode::NOT_FOUND, 10015, "Unknown Webhook"));
    }
    if path["token"] != WEBHOOK_TOKEN {
        return Err(error(StatusCode::UNAUTHORIZED, 50027, "Invalid Webhook Token"));
    }
    Ok(())
}

type Ctx = State<(Script, Shared)>;

async fn webhook(_: Ctx, Path(path): Path<HashMap<String, String>>) -> Response {
    if let Err(r) = check_webhook(&path) {
        return r;
    }
    let hook = json!({"type": 1, "id": WEBHOOK_ID, "name": "Nectar", "avatar": null,
                      "channel_id": CHANNEL_ID, "guild_id": GUILD_ID, "application_id": null,
                      "token": WEBHOOK_TOKEN});
    harness::json(StatusCode::OK, &hook)
}

async fn execute(
    State((script, state)): Ctx,
    Path(path): Path<HashMap<String, String>>,
    Query(query): Query<Vec<(String, String)>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = check_webhook(&path) {
        return r;
    }
    let wait = query
        .iter()
        .any(|(k, v)| k == "wait" && matches!(v.as_str(), "true" | "True" | "1"));
    if harness::media_type(&headers).as_deref() != Some("application/json") {
        return invalid_form_body(json!({"_errors": [{"code": "CONTENT_TYPE_INVALID",
            "message": "Expected \"Content-Type\" header to be one of {'application/json', 'multipart/form-data'}."}]}));
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return error(StatusCode::BAD_REQUEST, 50109, INVALID_JSON);
    };
    let Some(object) = payload.as_object() else {
        return invalid_form_body(json!({"_errors": [{"code": "DICT_TYPE_CONVERT",
            "message": "Only dictionaries may be used in a DictType"}]}));
    };
    let errors = check_message(&payload);
    if !errors.is_empty() {
        return invalid_form_body(Value::Object(errors));
    }
    let content = object.get("content").and_then(Value::as_str).unwrap_or_default();
    let embeds = object.get("embeds").cloned().unwrap_or(json!([]));
    let others = ["components", "poll", "attachments"]
        .iter()
        .any(|k| object.get(*k).is_some_and(|v| !v.is_null()));
    if content.is_empty() && embeds.as_array().is_none_or(Vec::is_empty) && !others {
        return error(StatusCode::BAD_REQUEST, 50006, "Cannot send an empty message");
    }
    match script.verdict(&String::from_utf8_lossy(&body)) {
        Verdict::Refuse => {
            return error(StatusCode::BAD_REQUEST, 200_000, BLOCKED);
        }
        Verdict::FailOnce => return error(StatusCode::BAD_GATEWAY, 0, "502: Bad Gateway"),
        Verdict::Accept => {}
    }
    let now = harness::now_millis();
    let message = {
        let mut s = state.lock().expect("discord");
        s.sequence += 1;
        let id = (((now - DISCORD_EPOCH_MS) << 22) | (s.sequence & 0xfff)).to_string();
        let username = object.get("username").and_then(Value::as_str).unwrap_or("Nectar");
        let message = json!({
            "id": id, "type": 0, "content": content, "channel_id": CHANNEL_ID,
            "author": {"id": WEBHOOK_ID, "username": username, "avatar": null,
                       "discriminator": "0000", "bot": true},
            "attachments": [], "embeds": embeds, "mentions": [], "mention_roles": [],
            "pinned": false, "mention_everyone": false,
            "tts": object.get("tts").and_then(Value::as_bool).unwrap_or(false),
            "timestamp": harness::iso8601(now), "edited_timestamp": null, "flags": 0,
            "components": [], "webhook_id": WEBHOOK_ID,
        });
        s.messages.push(message.clone());
        message
    };
    if wait {
        harness::json(StatusCode::OK, &message)
    } else {
        StatusCode::NO_CONTENT.into_response()
    }
}

/// Adds one error at a JSON pointer to Discord's nested form errors.
fn add(errors: &mut Map<String, Value>, pointer: &str, code: &str, message: &str) {
    let mut at = errors;
    for key in pointer.split('/').skip(1) {
        let entry = at.entry(key.to_owned()).or_insert_with(|| json!({}));
        at = entry.as_object_mut().expect("object");
    }
    at.insert("_errors".into(), json!([{"code": code, "message": message}]));
}

fn too_long(errors: &mut Map<String, Value>, pointer: &str, max: usize) {
    let message = format!("Must be {max} or fewer in length.");
    add(errors, pointer, "BASE_TYPE_MAX_LENGTH", &message);
}

/// Discord's nested form errors for a message body (empty when valid).
fn check_message(body: &Value) -> Map<String, Value> {
    let mut e = Map::new();
    let mut limits = vec![("/content".to_owned(), MAX_CONTENT), ("/username".to_owned(), 80)];
    match body.get("embeds") {
        None | Some(Value::Null) => {}
        Some(Value::Array(embeds)) if embeds.len() > 10 => too_long(&mut e, "/embeds", 10),
        Some(Value::Array(embeds)) => {
            for (i, embed) in embeds.iter().enumerate() {
                for (key, max) in [
                    ("title", 256),
                    ("description", 4096),
                    ("footer/text", 2048),
                    ("author/name", 256),
                ] {
                    limits.push((format!("/embeds/{i}/{key}"), max));
                }
                let fields = embed.get("fields").and_then(Value::as_array).map_or(0, Vec::len);
                if fields > 25 {
                    too_long(&mut e, &format!("/embeds/{i}/fields"), 25);
                }
                for j in 0..fields {
                    limits.push((format!("/embeds/{i}/fields/{j}/name"), 256));
                    limits.push((format!("/embeds/{i}/fields/{j}/value"), 1024));
                }
            }
        }
        Some(_) => add(&mut e, "/embeds", "BASE_TYPE_LIST", "Must be an array."),
    }
    for (pointer, max) in limits {
        match body.pointer(&pointer) {
            None | Some(Value::Null) => {}
            Some(Value::String(s)) if s.chars().count() <= max => {}
            Some(Value::String(_)) => too_long(&mut e, &pointer, max),
            Some(other) => {
                let message = format!("Could not interpret \"{other}\" as string.");
                add(&mut e, &pointer, "BASE_TYPE_STRING", &message);
            }
        }
    }
    e
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn post(url: &str, body: Value) -> reqwest::Response {
        reqwest::Client::new().post(url).json(&body).send().await.expect("send")
    }

    #[tokio::test]
    async fn posts_with_and_without_wait_and_refuses_as_discord() {
        let fake = FakeDiscord::start().await;
        let url = fake.webhook_url();
        let r = post(&format!("{url}?wait=true"), json!({"content": "lead 1"})).await;
        assert_eq!(r.status(), 200);
        assert!(r.headers().contains_key("x-ratelimit-bucket"));
        let message: Value = r.json().await.expect("json");
        assert_eq!(
            (message["content"].as_str(), message["webhook_id"].as_str()),
            (Some("lead 1"), Some(WEBHOOK_ID))
        );
        assert_eq!(post(&url, json!({"embeds": [{"title": "lead 2"}]})).await.status(), 204);
        assert_eq!(fake.stored().len(), 2);

        let long = post(&url, json!({"content": "x".repeat(2001)})).await;
        assert_eq!(long.status(), 400);
        let body: Value = long.json().await.expect("json");
        assert_eq!(body["code"], 50035);
        assert_eq!(body["errors"]["content"]["_errors"][0]["code"], "BASE_TYPE_MAX_LENGTH");
        let empty: Value = post(&url, json!({"content": ""})).await.json().await.expect("json");
        assert_eq!(empty["code"], 50006);

        let wrong = url.replace(WEBHOOK_TOKEN, "nope");
        let r = post(&wrong, json!({"content": "x"})).await;
        assert_eq!(r.status(), 401);
        assert_eq!(r.json::<Value>().await.expect("json")["code"], 50027);
        let unknown = url.replace(WEBHOOK_ID, "1");
        assert_eq!(reqwest::get(&unknown).await.expect("get").status(), 404);
        assert_eq!(reqwest::get(&url).await.expect("get").status(), 200);
        assert_eq!(fake.stored().len(), 2);
    }

    #[tokio::test]
    async fn throttles_with_header_and_float_retry_after() {
        let fake = FakeDiscord::start().await;
        fake.script().throttle_next(1, 3);
        let r = post(&format!("{}?wait=true", fake.webhook_url()), json!({"content": "x"})).await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "3");
        assert_eq!(r.headers()["x-ratelimit-scope"], "user");
        let body: Value = r.json().await.expect("json");
        assert_eq!(
            (body["retry_after"].as_f64(), body["global"].as_bool()),
            (Some(3.0), Some(false))
        );
        assert!(fake.stored().is_empty());
    }
}
