//! A fake Slack: the Web API methods and the incoming webhook `nectar-sink-slack` calls,
//! checked and answered as Slack documents them.
//!
//! Endpoints (Slack's reference):
//! - `POST /api/chat.postMessage` — <https://docs.slack.dev/reference/methods/chat.postMessage>:
//!   JSON body (`channel`, `text`, `blocks`, `metadata`, …). Errors answer HTTP 200
//!   `{"ok": false, "error": "<code>"}`: `channel_not_found`, `is_archived`, `not_in_channel`,
//!   `no_text` (neither text nor blocks), `invalid_blocks` (with `errors` and
//!   `response_metadata.messages`, as Slack explains a Block Kit error), `invalid_blocks_format`,
//!   `invalid_metadata_format`. Text longer than 40,000 characters is truncated with the
//!   `message_truncated` warning. Success: `{"ok": true, "channel", "ts", "message"}`.
//! - Block Kit limits — <https://docs.slack.dev/reference/block-kit/blocks>: at most 50 blocks a
//!   message; `block_id` ≤ 255; header text `plain_text` ≤ 150; section text ≤ 3000, fields ≤
//!   10 of ≤ 2000 each; context elements ≤ 10.
//! - Message metadata — <https://docs.slack.dev/messaging/message-metadata>: an object with a
//!   string `event_type` and an object `event_payload`.
//! - `GET /api/conversations.history` —
//!   <https://docs.slack.dev/reference/methods/conversations.history>: `channel`, `oldest`,
//!   `latest`, `inclusive`, `limit` (default 100, at most 999), `cursor`, `include_all_metadata`
//!   (without it a message's metadata has no `event_payload`). Newest first; `has_more` and
//!   `response_metadata.next_cursor` page through; `invalid_cursor`, `channel_not_found`,
//!   `not_in_channel`.
//! - `GET /api/conversations.info` — <https://docs.slack.dev/reference/methods/conversations.info>:
//!   the channel object with `is_archived` and `is_member`.
//! - `POST /api/auth.test` — <https://docs.slack.dev/reference/methods/auth.test>.
//! - Auth and content types — <https://docs.slack.dev/apis/web-api>: `Authorization: Bearer
//!   <token>` (or a `token` argument); no token: `not_authed`; a wrong one: `invalid_auth`. A
//!   JSON body needs `Content-type: application/json`; the `charset=utf-8` parameter is
//!   recommended, not required: without it the call succeeds with the `missing_charset`
//!   warning; a charset other than `utf-8`/`iso-8859-1` is `invalid_charset`, a body without a
//!   content type `missing_post_type`, another type `invalid_post_type`. (The fake does not
//!   parse form-encoded bodies, which Slack also accepts; it answers `fake_supports_json_only`.)
//! - Rate limits — <https://docs.slack.dev/apis/web-api/rate-limits>: HTTP 429 with
//!   `Retry-After` (seconds) and `{"ok": false, "error": "ratelimited"}`.
//! - `POST /services/T…/B…/<secret>` (incoming webhook) —
//!   <https://docs.slack.dev/messaging/sending-messages-using-incoming-webhooks> and
//!   <https://api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks>:
//!   `200 ok` (text), `400 invalid_payload` / `no_text` / `invalid_blocks`, `404 no_service`
//!   (an unknown or disabled webhook), `429` with `Retry-After`.
//!
//! Counting: every stored message is counted per event id, duplicates included. A bot message's
//! event id is its metadata's `event_payload.event_id`; a webhook message has no metadata, so
//! the fake takes the id from the text `event <id>` (the sink's default blocks end with it).
//!
//! Failure injection (posts only: `chat.postMessage` and the webhook):
//! [`FakeSlack::fail_next`] (HTTP 500), [`FakeSlack::rate_limit_next`] (429 with `Retry-After`),
//! [`FakeSlack::reject_containing`] (a message whose body contains a string is refused with an
//! error code until [`FakeSlack::fix`]), [`FakeSlack::fail_once_containing`] (refused once),
//! [`FakeSlack::lose_answer_containing`] (stored, but answered with a 500 once, like an answer
//! lost on the way back), [`FakeSlack::set_post_delay`] (each post is answered this long after
//! it is stored, so a client killed meanwhile posted a message it never heard about).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

/// The bot token the fake accepts.
pub const BOT_TOKEN: &str = "xoxb-1111111111-2222222222-fakefakefakefakefakefake";
/// The fake workspace's channels: members, one archived, one the bot is not in.
pub const LEADS_CHANNEL: &str = "C0LEADS01";
pub const DEALS_CHANNEL: &str = "C0DEALS01";
pub const ARCHIVED_CHANNEL: &str = "C0ARCHIVE";
pub const OUTSIDE_CHANNEL: &str = "C0OUTSIDE";
/// The incoming webhook's path segments (it posts to [`LEADS_CHANNEL`]).
pub const WEBHOOK_PATH: &str = "T0FAKE001/B0FAKE001/fakewebhooksecret000000";

const MAX_BLOCKS: usize = 50;
const MAX_TEXT: usize = 40_000;

/// One post request as the fake saw it.
#[derive(Debug, Clone)]
pub struct PostRequest {
    pub at: Instant,
    /// `chat.postMessage` or `webhook`.
    pub endpoint: &'static str,
    pub channel: Option<String>,
    pub event_id: Option<String>,
    /// `ok`, an error code, or `http <status>`.
    pub answer: String,
    /// Whether the answer was sent (a post is stored first, then answered after the post delay).
    pub answered: bool,
}

/// A message the fake stored.
#[derive(Debug, Clone)]
pub struct StoredMessage {
    pub channel: String,
    pub ts: String,
    pub text: String,
    pub blocks: Option<Value>,
    pub metadata: Option<Value>,
    pub event_id: Option<String>,
    pub via_webhook: bool,
}

#[derive(Debug)]
struct Channel {
    id: &'static str,
    name: &'static str,
    is_archived: bool,
    is_member: bool,
}

#[derive(Debug, Default)]
struct Injections {
    fail_next: usize,
    rate_limit_next: usize,
    retry_after_secs: u64,
    /// needle → error code, until fixed.
    reject: Vec<(String, String)>,
    /// needle → error code, once.
    fail_once: Vec<(String, String)>,
    /// needles whose next post is stored but answered 500.
    lose_answer: Vec<String>,
    post_delay: Duration,
}

#[derive(Debug)]
struct FakeState {
    channels: Vec<Channel>,
    messages: Vec<StoredMessage>,
    /// Microseconds of the last `ts` handed out (each is unique and increasing).
    last_ts: u64,
    posts: Vec<PostRequest>,
    history_reads: usize,
    injections: Injections,
    token_revoked: bool,
}

type Shared = Arc<Mutex<FakeState>>;

/// A running fake Slack.
#[derive(Debug, Clone)]
pub struct FakeSlack {
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    state: Shared,
}

impl FakeSlack {
    /// Serve on a random local port.
    pub async fn start() -> Self {
        let state: Shared = Arc::new(Mutex::new(FakeState {
            channels: vec![
                Channel {
                    id: LEADS_CHANNEL,
                    name: "leads",
                    is_archived: false,
                    is_member: true,
                },
                Channel {
                    id: DEALS_CHANNEL,
                    name: "deals",
                    is_archived: false,
                    is_member: true,
                },
                Channel {
                    id: ARCHIVED_CHANNEL,
                    name: "old-leads",
                    is_archived: true,
                    is_member: true,
                },
                Channel {
                    id: OUTSIDE_CHANNEL,
                    name: "elsewhere",
                    is_archived: false,
                    is_member: false,
                },
            ],
            messages: Vec::new(),
            last_ts: 0,
            posts: Vec::new(),
            history_reads: 0,
            injections: Injections::default(),
            token_revoked: false,
        }));
        let app = Router::new()
            .route("/api/auth.test", post(auth_test).get(auth_test))
            .route("/api/chat.postMessage", post(post_message))
            .route("/api/conversations.history", get(history))
            .route("/api/conversations.info", get(info))
            .route("/services/{team}/{bot}/{secret}", post(webhook))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self {
            base: format!("http://{addr}"),
            state,
        }
    }

    /// The Web API base URL (`target.api_url`).
    pub fn api_url(&self) -> String {
        format!("{}/api", self.base)
    }

    /// The incoming webhook's URL (`target.webhook_url`).
    pub fn webhook_url(&self) -> String {
        format!("{}/services/{WEBHOOK_PATH}", self.base)
    }

    fn with<R>(&self, f: impl FnOnce(&mut FakeState) -> R) -> R {
        f(&mut self.state.lock().expect("fake state"))
    }

    /// The next `n` posts answer HTTP 500 (before any injected 429s).
    pub fn fail_next(&self, n: usize) {
        self.with(|s| s.injections.fail_next = n);
    }

    /// The next `n` posts answer HTTP 429 with `Retry-After: <secs>`.
    pub fn rate_limit_next(&self, n: usize, retry_after_secs: u64) {
        self.with(|s| {
            s.injections.rate_limit_next = n;
            s.injections.retry_after_secs = retry_after_secs;
        });
    }

    /// Posts whose body contains `needle` are refused with `error` (a chat.postMessage error
    /// code; the webhook answers 400 with it) until [`FakeSlack::fix`].
    pub fn reject_containing(&self, needle: &str, error: &str) {
        self.with(|s| s.injections.reject.push((needle.to_owned(), error.to_owned())));
    }

    /// Lift every [`FakeSlack::reject_containing`].
    pub fn fix(&self) {
        self.with(|s| s.injections.reject.clear());
    }

    /// The next post whose body contains `needle` is refused once with `error`.
    pub fn fail_once_containing(&self, needle: &str, error: &str) {
        self.with(|s| s.injections.fail_once.push((needle.to_owned(), error.to_owned())));
    }

    /// The next post whose body contains `needle` is stored but answered HTTP 500.
    pub fn lose_answer_containing(&self, needle: &str) {
        self.with(|s| s.injections.lose_answer.push(needle.to_owned()));
    }

    /// Each post is answered `delay` after it is stored (so a kill can land between the two).
    pub fn set_post_delay(&self, delay: Duration) {
        self.with(|s| s.injections.post_delay = delay);
    }

    /// The token stops working (`token_revoked`) everywhere.
    pub fn revoke_token(&self) {
        self.with(|s| s.token_revoked = true);
    }

    /// Stored messages per event id (duplicates counted).
    pub fn counts(&self) -> HashMap<String, usize> {
        self.with(|s| {
            let mut counts = HashMap::new();
            for m in &s.messages {
                if let Some(id) = &m.event_id {
                    *counts.entry(id.clone()).or_insert(0) += 1;
                }
            }
            counts
        })
    }

    /// Every stored message.
    pub fn messages(&self) -> Vec<StoredMessage> {
        self.with(|s| s.messages.clone())
    }

    /// Every post request, in arrival order.
    pub fn posts(&self) -> Vec<PostRequest> {
        self.with(|s| s.posts.clone())
    }

    /// The post requests carrying `event_id`.
    pub fn posts_of(&self, event_id: &str) -> Vec<PostRequest> {
        self.with(|s| {
            s.posts
                .iter()
                .filter(|p| p.event_id.as_deref() == Some(event_id))
                .cloned()
                .collect()
        })
    }

    /// Posts stored but not yet answered (a client killed now never hears about them).
    pub fn unanswered_posts(&self) -> Vec<PostRequest> {
        self.with(|s| {
            s.posts
                .iter()
                .filter(|p| p.answer == "ok" && !p.answered)
                .cloned()
                .collect()
        })
    }

    /// How many `conversations.history` calls were answered.
    pub fn history_reads(&self) -> usize {
        self.with(|s| s.history_reads)
    }
}

// ---- answers -------------------------------------------------------------------------------

fn slack_ok(mut body: Value, warnings: &[&str]) -> Response {
    body["ok"] = Value::Bool(true);
    if !warnings.is_empty() {
        body["warning"] = Value::String(warnings.join(","));
        body["response_metadata"] = json!({ "warnings": warnings });
    }
    json_response(StatusCode::OK, &body)
}

fn slack_error(code: &str) -> Response {
    json_response(StatusCode::OK, &json!({"ok": false, "error": code}))
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body.to_string(),
    )
        .into_response()
}

fn rate_limited(retry_after: u64, webhook: bool) -> Response {
    let mut response = if webhook {
        (StatusCode::TOO_MANY_REQUESTS, "rate_limited").into_response()
    } else {
        json_response(
            StatusCode::TOO_MANY_REQUESTS,
            &json!({"ok": false, "error": "ratelimited"}),
        )
    };
    response.headers_mut().insert(
        header::RETRY_AFTER,
        HeaderValue::from_str(&retry_after.to_string()).expect("header"),
    );
    response
}

fn server_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        [(header::CONTENT_TYPE, "text/html")],
        "<html><body>Internal Server Error</body></html>",
    )
        .into_response()
}

fn webhook_answer(status: StatusCode, body: &str) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html")], body.to_owned()).into_response()
}

// ---- checks --------------------------------------------------------------------------------

/// The token of a Web API call: `Err(error code)` when missing or wrong.
fn check_token(state: &FakeState, headers: &HeaderMap, args: &HashMap<String, String>) -> Result<(), &'static str> {
    let token = match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        Some(v) => v.strip_prefix("Bearer ").map(str::to_owned),
        None => args.get("token").cloned(),
    };
    match token {
        None => Err("not_authed"),
        Some(_) if state.token_revoked => Err("token_revoked"),
        Some(t) if t == BOT_TOKEN => Ok(()),
        Some(_) => Err("invalid_auth"),
    }
}

/// A JSON POST body as Slack reads it: the object, and the warnings to answer with.
fn json_body(headers: &HeaderMap, body: &[u8]) -> Result<(Value, Vec<&'static str>), &'static str> {
    let Some(content_type) = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return if body.is_empty() {
            Ok((json!({}), vec![]))
        } else {
            Err("missing_post_type")
        };
    };
    let mut parts = content_type.split(';').map(str::trim);
    let mime = parts.next().unwrap_or_default().to_ascii_lowercase();
    let charset = parts
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("charset"))
        .map(|(_, v)| v.trim().trim_matches('"').to_ascii_lowercase());
    match mime.as_str() {
        "application/json" => {}
        "application/x-www-form-urlencoded" | "multipart/form-data" => return Err("fake_supports_json_only"),
        "text/plain" => return Err("fake_supports_json_only"),
        _ => return Err("invalid_post_type"),
    }
    let mut warnings = Vec::new();
    match charset.as_deref() {
        None => warnings.push("missing_charset"),
        Some("utf-8" | "iso-8859-1") => {}
        Some(_) => return Err("invalid_charset"),
    }
    if body.is_empty() {
        return Ok((json!({}), warnings));
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v @ Value::Object(_)) => Ok((v, warnings)),
        Ok(_) => Err("json_not_object"),
        Err(_) => Err("invalid_json"),
    }
}

fn text_object(v: &Value, max: usize, plain_only: bool, at: &str) -> Result<(), String> {
    let kind = v.get("type").and_then(Value::as_str);
    match kind {
        Some("plain_text") => {}
        Some("mrkdwn") if !plain_only => {}
        _ => {
            return Err(format!(
                "must be a {} text object [json-pointer:{at}/type]",
                if plain_only {
                    "plain_text"
                } else {
                    "plain_text or mrkdwn"
                }
            ));
        }
    }
    match v.get("text").and_then(Value::as_str) {
        Some("") => Err(format!("must be more than 0 characters [json-pointer:{at}/text]")),
        Some(t) if t.chars().count() > max => Err(format!(
            "must be less than {} characters [json-pointer:{at}/text]",
            max + 1
        )),
        Some(_) => Ok(()),
        None => Err(format!("missing required field: text [json-pointer:{at}]")),
    }
}

/// Block Kit checks; the errors as Slack words them (`… [json-pointer:/blocks/0/text]`).
fn check_blocks(blocks: &[Value]) -> Vec<String> {
    let mut errors = Vec::new();
    if blocks.len() > MAX_BLOCKS {
        errors.push(format!(
            "no more than {MAX_BLOCKS} items allowed [json-pointer:/blocks]"
        ));
        return errors;
    }
    for (i, block) in blocks.iter().enumerate() {
        let at = format!("/blocks/{i}");
        let Some(kind) = block.get("type").and_then(Value::as_str) else {
            errors.push(format!("missing required field: type [json-pointer:{at}]"));
            continue;
        };
        if let Some(id) = block.get("block_id").and_then(Value::as_str)
            && id.chars().count() > 255
        {
            errors.push(format!("must be less than 256 characters [json-pointer:{at}/block_id]"));
        }
        let result = match kind {
            "header" => match block.get("text") {
                Some(t) => text_object(t, 150, true, &format!("{at}/text")),
                None => Err(format!("missing required field: text [json-pointer:{at}]")),
            },
            "section" => {
                let text = block
                    .get("text")
                    .map(|t| text_object(t, 3000, false, &format!("{at}/text")));
                let fields = block.get("fields").map(|f| match f.as_array() {
                    Some(fields) if fields.is_empty() || fields.len() > 10 => Err(format!(
                        "must provide between 1 and 10 items [json-pointer:{at}/fields]"
                    )),
                    Some(fields) => fields
                        .iter()
                        .enumerate()
                        .try_for_each(|(j, f)| text_object(f, 2000, false, &format!("{at}/fields/{j}"))),
                    None => Err(format!("must be an array [json-pointer:{at}/fields]")),
                });
                match (text, fields) {
                    (None, None) => Err(format!("must provide text or fields [json-pointer:{at}]")),
                    (t, f) => t.unwrap_or(Ok(())).and(f.unwrap_or(Ok(()))),
                }
            }
            "context" => match block.get("elements").and_then(Value::as_array) {
                Some(e) if e.is_empty() || e.len() > 10 => Err(format!(
                    "must provide between 1 and 10 items [json-pointer:{at}/elements]"
                )),
                Some(_) => Ok(()),
                None => Err(format!("missing required field: elements [json-pointer:{at}]")),
            },
            _ => Ok(()),
        };
        if let Err(e) = result {
            errors.push(e);
        }
    }
    errors
}

fn check_metadata(metadata: &Value) -> Result<Value, ()> {
    let metadata = match metadata {
        Value::String(s) => serde_json::from_str(s).map_err(|_| ())?,
        other => other.clone(),
    };
    let event_type = metadata.get("event_type").and_then(Value::as_str).ok_or(())?;
    let named = !event_type.is_empty() && event_type.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !named || !metadata.get("event_payload").is_some_and(Value::is_object) {
        return Err(());
    }
    Ok(metadata)
}

/// The blocks argument: an array, or a string holding one.
fn blocks_arg(body: &Value) -> Result<Option<Vec<Value>>, &'static str> {
    match body.get("blocks") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a.clone())),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(Value::Array(a)) => Ok(Some(a)),
            _ => Err("invalid_blocks_format"),
        },
        Some(_) => Err("invalid_blocks_format"),
    }
}

fn next_ts(state: &mut FakeState) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_micros() as u64;
    state.last_ts = now.max(state.last_ts + 1);
    format_ts(state.last_ts)
}

fn format_ts(micros: u64) -> String {
    format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

fn parse_ts(s: &str) -> Option<u64> {
    let secs: f64 = s.parse().ok()?;
    (secs >= 0.0).then(|| (secs * 1_000_000.0).round() as u64)
}

/// What the injections say about a post whose body is `raw`, before it is looked at.
enum Injected {
    None,
    Respond(Response),
    Refuse(String),
    LoseAnswer,
}

fn injected(state: &mut FakeState, raw: &str, webhook: bool) -> Injected {
    let inj = &mut state.injections;
    // Server errors first, then rate limits: an outage, then a recovering Slack shedding load.
    if inj.fail_next > 0 {
        inj.fail_next -= 1;
        return Injected::Respond(server_error());
    }
    if inj.rate_limit_next > 0 {
        inj.rate_limit_next -= 1;
        return Injected::Respond(rate_limited(inj.retry_after_secs, webhook));
    }
    if let Some((_, code)) = inj.reject.iter().find(|(needle, _)| raw.contains(needle.as_str())) {
        return Injected::Refuse(code.clone());
    }
    if let Some(i) = inj
        .fail_once
        .iter()
        .position(|(needle, _)| raw.contains(needle.as_str()))
    {
        return Injected::Refuse(inj.fail_once.remove(i).1);
    }
    if let Some(i) = inj.lose_answer.iter().position(|needle| raw.contains(needle.as_str())) {
        inj.lose_answer.remove(i);
        return Injected::LoseAnswer;
    }
    Injected::None
}

fn answer_label(response: &Response, code: Option<&str>) -> String {
    match code {
        Some(c) => c.to_owned(),
        None if response.status() == StatusCode::OK => "ok".into(),
        None => format!("http {}", response.status().as_u16()),
    }
}

// ---- handlers ------------------------------------------------------------------------------

async fn auth_test(
    State(state): State<Shared>,
    Query(args): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let state = state.lock().expect("fake state");
    if let Err(code) = json_body(&headers, &body) {
        return slack_error(code);
    }
    if let Err(code) = check_token(&state, &headers, &args) {
        return slack_error(code);
    }
    slack_ok(
        json!({
            "url": "https://nectar-fake.slack.com/",
            "team": "Nectar Fake",
            "user": "nectar",
            "team_id": "T0FAKE001",
            "user_id": "U0NECTAR1",
            "bot_id": "B0NECTAR1",
            "is_enterprise_install": false,
        }),
        &[],
    )
}

async fn post_message(
    State(shared): State<Shared>,
    Query(args): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (response, index, delay) = {
        let at = Instant::now();
        let mut state = shared.lock().expect("fake state");
        let raw = String::from_utf8_lossy(&body).into_owned();
        let parsed = json_body(&headers, &body);
        let channel = parsed
            .as_ref()
            .ok()
            .and_then(|(b, _)| b.get("channel").and_then(Value::as_str).map(str::to_owned));
        let event_id = parsed
            .as_ref()
            .ok()
            .and_then(|(b, _)| b.pointer("/metadata/event_payload/event_id"))
            .and_then(Value::as_str)
            .map(str::to_owned);
        let (response, code) = post_message_answer(&mut state, &headers, &args, parsed, &raw);
        let answer = answer_label(&response, code.as_deref());
        state.posts.push(PostRequest {
            at,
            endpoint: "chat.postMessage",
            channel,
            event_id,
            answer,
            answered: false,
        });
        (response, state.posts.len() - 1, state.injections.post_delay)
    };
    answer_after_delay(&shared, index, delay, response).await
}

/// Stored first, answered after the post delay: a client killed meanwhile has posted a
/// message it never heard about.
async fn answer_after_delay(shared: &Shared, index: usize, delay: Duration, response: Response) -> Response {
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
    shared.lock().expect("fake state").posts[index].answered = true;
    response
}

fn post_message_answer(
    state: &mut FakeState,
    headers: &HeaderMap,
    args: &HashMap<String, String>,
    parsed: Result<(Value, Vec<&'static str>), &'static str>,
    raw: &str,
) -> (Response, Option<String>) {
    let refuse = |code: &str| (slack_error(code), Some(code.to_owned()));
    let lose_answer = match injected(state, raw, false) {
        Injected::Respond(r) => return (r, None),
        Injected::Refuse(code) => return refuse(&code),
        Injected::LoseAnswer => true,
        Injected::None => false,
    };
    let (body, mut warnings) = match parsed {
        Ok(p) => p,
        Err(code) => return refuse(code),
    };
    if let Err(code) = check_token(state, headers, args) {
        return refuse(code);
    }
    let channel_id = body.get("channel").and_then(Value::as_str).unwrap_or_default();
    let Some(channel) = state.channels.iter().find(|c| c.id == channel_id) else {
        return refuse("channel_not_found");
    };
    if channel.is_archived {
        return refuse("is_archived");
    }
    if !channel.is_member {
        return refuse("not_in_channel");
    }
    let blocks = match blocks_arg(&body) {
        Ok(b) => b,
        Err(code) => return refuse(code),
    };
    let mut text = body.get("text").and_then(Value::as_str).unwrap_or_default().to_owned();
    if text.is_empty() && blocks.as_ref().is_none_or(Vec::is_empty) {
        return refuse("no_text");
    }
    if let Some(blocks) = &blocks {
        let errors = check_blocks(blocks);
        if !errors.is_empty() {
            let messages: Vec<String> = errors.iter().map(|e| format!("[ERROR] {e}")).collect();
            return (
                json_response(
                    StatusCode::OK,
                    &json!({"ok": false, "error": "invalid_blocks", "errors": errors,
                            "response_metadata": {"messages": messages}}),
                ),
                Some("invalid_blocks".into()),
            );
        }
    }
    if text.chars().count() > MAX_TEXT {
        text = text.chars().take(MAX_TEXT).collect();
        warnings.push("message_truncated");
    }
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => None,
        Some(m) => match check_metadata(m) {
            Ok(m) => Some(m),
            Err(()) => return refuse("invalid_metadata_format"),
        },
    };
    let ts = next_ts(state);
    let event_id = metadata
        .as_ref()
        .and_then(|m| m.pointer("/event_payload/event_id"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let channel_id = channel_id.to_owned();
    let message = json!({
        "type": "message", "subtype": "bot_message", "text": text, "ts": ts,
        "bot_id": "B0NECTAR1", "app_id": "A0NECTAR1",
        "blocks": blocks.clone().unwrap_or_default(),
    });
    state.messages.push(StoredMessage {
        channel: channel_id.clone(),
        ts: ts.clone(),
        text,
        blocks: blocks.map(Value::Array),
        metadata,
        event_id,
        via_webhook: false,
    });
    if lose_answer {
        return (server_error(), None);
    }
    (
        slack_ok(json!({"channel": channel_id, "ts": ts, "message": message}), &warnings),
        None,
    )
}

async fn history(
    State(state): State<Shared>,
    Query(args): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let mut state = state.lock().expect("fake state");
    if let Err(code) = check_token(&state, &headers, &args) {
        return slack_error(code);
    }
    let channel_id = args.get("channel").map(String::as_str).unwrap_or_default();
    let Some(channel) = state.channels.iter().find(|c| c.id == channel_id) else {
        return slack_error("channel_not_found");
    };
    if !channel.is_member {
        return slack_error("not_in_channel");
    }
    let flag = |k: &str| args.get(k).is_some_and(|v| v == "true" || v == "1");
    let inclusive = flag("inclusive");
    let with_metadata = flag("include_all_metadata");
    let oldest = match args.get("oldest").map(|s| parse_ts(s)) {
        None => 0,
        Some(Some(t)) => t,
        Some(None) => return slack_error("invalid_ts_oldest"),
    };
    let latest = match args.get("latest").map(|s| parse_ts(s)) {
        None => u64::MAX,
        Some(Some(t)) => t,
        Some(None) => return slack_error("invalid_ts_latest"),
    };
    let limit = args
        .get("limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(100)
        .clamp(1, 999);
    // The cursor says where the previous page ended: messages older than that ts.
    let before = match args.get("cursor").filter(|c| !c.is_empty()) {
        None => u64::MAX,
        Some(c) => match hex::decode(c)
            .ok()
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| s.strip_prefix("next_ts:").and_then(|t| t.parse::<u64>().ok()))
        {
            Some(t) => t,
            None => return slack_error("invalid_cursor"),
        },
    };
    let mut selected: Vec<&StoredMessage> = state
        .messages
        .iter()
        .filter(|m| m.channel == channel_id)
        .filter(|m| {
            let ts = parse_ts(&m.ts).unwrap_or_default();
            let after_oldest = if inclusive { ts >= oldest } else { ts > oldest };
            let before_latest = if inclusive { ts <= latest } else { ts < latest };
            after_oldest && before_latest && ts < before
        })
        .collect();
    selected.sort_by(|a, b| b.ts.cmp(&a.ts));
    let has_more = selected.len() > limit;
    selected.truncate(limit);
    let next_cursor = match (has_more, selected.last()) {
        (true, Some(last)) => hex::encode(format!("next_ts:{}", parse_ts(&last.ts).unwrap_or_default())),
        _ => String::new(),
    };
    let messages: Vec<Value> = selected
        .iter()
        .map(|m| {
            let mut v = json!({"type": "message", "subtype": "bot_message", "text": m.text, "ts": m.ts,
                               "bot_id": "B0NECTAR1", "app_id": "A0NECTAR1"});
            if let Some(blocks) = &m.blocks {
                v["blocks"] = blocks.clone();
            }
            if let Some(metadata) = &m.metadata {
                v["metadata"] = if with_metadata {
                    metadata.clone()
                } else {
                    json!({"event_type": metadata["event_type"]})
                };
            }
            v
        })
        .collect();
    state.history_reads += 1;
    slack_ok(
        json!({
            "messages": messages,
            "has_more": has_more,
            "pin_count": 0,
            "channel_actions_ts": null,
            "channel_actions_count": 0,
            "response_metadata": {"next_cursor": next_cursor},
        }),
        &[],
    )
}

async fn info(
    State(state): State<Shared>,
    Query(args): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let state = state.lock().expect("fake state");
    if let Err(code) = check_token(&state, &headers, &args) {
        return slack_error(code);
    }
    let channel_id = args.get("channel").map(String::as_str).unwrap_or_default();
    let Some(c) = state.channels.iter().find(|c| c.id == channel_id) else {
        return slack_error("channel_not_found");
    };
    slack_ok(
        json!({"channel": {
            "id": c.id, "name": c.name, "name_normalized": c.name,
            "is_channel": true, "is_group": false, "is_im": false, "is_mpim": false,
            "is_private": false, "is_archived": c.is_archived, "is_general": false,
            "is_member": c.is_member, "created": 1_654_868_334, "creator": "U0CREATOR",
            "context_team_id": "T0FAKE001",
        }}),
        &[],
    )
}

async fn webhook(
    State(shared): State<Shared>,
    Path(path): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let (response, index, delay) = {
        let at = Instant::now();
        let mut state = shared.lock().expect("fake state");
        let raw = String::from_utf8_lossy(&body).into_owned();
        let (response, code, event_id) = webhook_answer_for(&mut state, &path, &headers, &body, &raw);
        let answer = answer_label(&response, code.as_deref());
        state.posts.push(PostRequest {
            at,
            endpoint: "webhook",
            channel: Some(LEADS_CHANNEL.to_owned()),
            event_id,
            answer,
            answered: false,
        });
        (response, state.posts.len() - 1, state.injections.post_delay)
    };
    answer_after_delay(&shared, index, delay, response).await
}

/// The event id in a webhook message: the word after `event ` in its text or blocks.
fn webhook_event_id(raw: &str) -> Option<String> {
    let start = raw.find("event ")? + "event ".len();
    let id: String = raw[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
        .collect();
    (!id.is_empty()).then_some(id)
}

fn webhook_answer_for(
    state: &mut FakeState,
    path: &(String, String, String),
    headers: &HeaderMap,
    body: &[u8],
    raw: &str,
) -> (Response, Option<String>, Option<String>) {
    let event_id = webhook_event_id(raw);
    let refuse =
        |status: StatusCode, code: &str| (webhook_answer(status, code), Some(code.to_owned()), event_id.clone());
    if format!("{}/{}/{}", path.0, path.1, path.2) != WEBHOOK_PATH || state.token_revoked {
        return refuse(StatusCode::NOT_FOUND, "no_service");
    }
    let lose_answer = match injected(state, raw, true) {
        Injected::Respond(r) => return (r, None, event_id),
        Injected::Refuse(code) => return refuse(StatusCode::BAD_REQUEST, &code),
        Injected::LoseAnswer => true,
        Injected::None => false,
    };
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .unwrap_or_default()
                .trim()
                .eq_ignore_ascii_case("application/json")
        });
    if !json_type {
        return refuse(StatusCode::BAD_REQUEST, "invalid_payload");
    }
    let Ok(payload @ Value::Object(_)) = serde_json::from_slice::<Value>(body) else {
        return refuse(StatusCode::BAD_REQUEST, "invalid_payload");
    };
    let blocks = match blocks_arg(&payload) {
        Ok(b) => b,
        Err(_) => return refuse(StatusCode::BAD_REQUEST, "invalid_blocks"),
    };
    let text = payload
        .get("text")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if text.is_empty() && blocks.as_ref().is_none_or(Vec::is_empty) {
        return refuse(StatusCode::BAD_REQUEST, "no_text");
    }
    if let Some(b) = &blocks
        && !check_blocks(b).is_empty()
    {
        return refuse(StatusCode::BAD_REQUEST, "invalid_blocks");
    }
    let ts = next_ts(state);
    state.messages.push(StoredMessage {
        channel: LEADS_CHANNEL.to_owned(),
        ts,
        text: text.chars().take(MAX_TEXT).collect(),
        blocks: blocks.map(Value::Array),
        metadata: None,
        event_id: event_id.clone(),
        via_webhook: true,
    });
    if lose_answer {
        return (server_error(), None, event_id);
    }
    (webhook_answer(StatusCode::OK, "ok"), None, event_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_are_checked_against_block_kit_limits() {
        let ok = vec![
            json!({"type": "header", "text": {"type": "plain_text", "text": "Hi"}}),
            json!({"type": "section", "fields": [{"type": "mrkdwn", "text": "*a*"}]}),
            json!({"type": "divider"}),
        ];
        assert!(check_blocks(&ok).is_empty());
        let too_many = vec![json!({"type": "divider"}); 51];
        assert_eq!(check_blocks(&too_many).len(), 1);
        let bad = vec![
            json!({"type": "header", "text": {"type": "mrkdwn", "text": "Hi"}}),
            json!({"type": "section", "text": {"type": "mrkdwn", "text": "x".repeat(3001)}}),
            json!({"type": "section"}),
            json!({"text": "no type"}),
        ];
        assert_eq!(check_blocks(&bad).len(), 4, "{:?}", check_blocks(&bad));
    }

    #[test]
    fn content_types_are_read_as_slack_does() {
        let mut h = HeaderMap::new();
        assert_eq!(json_body(&h, b"{}").unwrap_err(), "missing_post_type");
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        assert_eq!(json_body(&h, b"{}").unwrap().1, vec!["missing_charset"]);
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        );
        assert!(json_body(&h, b"{}").unwrap().1.is_empty());
        assert_eq!(json_body(&h, b"[1]").unwrap_err(), "json_not_object");
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=koi8-r"),
        );
        assert_eq!(json_body(&h, b"{}").unwrap_err(), "invalid_charset");
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/xml"));
        assert_eq!(json_body(&h, b"{}").unwrap_err(), "invalid_post_type");
    }

    #[test]
    fn webhook_messages_are_counted_by_the_id_in_their_text() {
        assert_eq!(
            webhook_event_id(r#"{"text":"x","blocks":[{"text":"lead.captured · event 0190-ab-cd"}]}"#),
            Some("0190-ab-cd".into())
        );
        assert_eq!(webhook_event_id("no id here"), None);
    }

    #[test]
    fn timestamps_round_trip() {
        assert_eq!(format_ts(1_700_000_000_000_123), "1700000000.000123");
        assert_eq!(parse_ts("1700000000.000123"), Some(1_700_000_000_000_123));
    }
}
