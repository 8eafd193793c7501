//! A fake Telegram Bot API: `sendMessage` and `getMe`, checked and answered as the Bot API
//! documents them.
//!
//! Sources:
//! - Making requests — <https://core.telegram.org/bots/api#making-requests>: `https://api.telegram.org/bot<token>/METHOD_NAME`,
//!   GET or POST, parameters in the query string, `application/x-www-form-urlencoded`,
//!   `application/json` or `multipart/form-data` (the fake does not parse multipart); method
//!   names are case-insensitive; the answer is always a JSON object with `ok`: `{"ok": true,
//!   "result": …}` or `{"ok": false, "error_code", "description", "parameters"?}` where
//!   `parameters` (ResponseParameters, <https://core.telegram.org/bots/api#responseparameters>)
//!   may hold `retry_after` (flood control, seconds) or `migrate_to_chat_id` (the group became a
//!   supergroup).
//! - sendMessage — <https://core.telegram.org/bots/api#sendmessage>: `chat_id` (integer, or
//!   `@channelusername`), `text` "1-4096 characters after entities parsing", `parse_mode`;
//!   answers the sent Message (<https://core.telegram.org/bots/api#message>).
//! - Formatting — <https://core.telegram.org/bots/api#formatting-options>: `MarkdownV2` requires
//!   `_*[]()~`>#+-=|{}.!` to be escaped with `\` outside entities (the fake checks the ones that
//!   never open an entity: `#+-={}.!`); `HTML` supports only the listed tags; `Markdown` is legacy.
//!   The length after parsing is approximated (tags and `\` escapes removed).
//! - getMe — <https://core.telegram.org/bots/api#getme>: the bot's User.
//!
//! HTTP status: the Bot API pages do not say it; Telegram answers with the HTTP status equal to
//! `error_code` (400, 401, 403, 404, 429), which is what the research notes found on third-party
//! pages and what the fake does. Descriptions are Telegram's wording as seen in practice
//! ("Bad Request: chat not found", "Forbidden: bot was blocked by the user", "Too Many Requests:
//! retry after N"). A token of the wrong form is 404 "Not Found"; a well-formed unknown one 401
//! "Unauthorized". Injections: outage 500; `refuse` → 400 "can't parse entities"; `fail_once` →
//! 502 once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use serde_json::{Value, json};

use super::harness::{self, Contract, FakeServer, Script, VendorFake, Verdict};

pub const BOT_TOKEN: &str = "7000000001:AAFakeNectarBotToken0123456789abcde";
pub const BOT_ID: i64 = 7_000_000_001;
pub const BOT_USERNAME: &str = "nectar_fake_bot";
/// A user who started the bot.
pub const PRIVATE_CHAT: i64 = 111_111_111;
/// A supergroup the bot is in.
pub const GROUP_CHAT: i64 = -1_001_234_567_890;
/// A channel the bot posts to, by username (its id is [`CHANNEL_ID`]).
pub const CHANNEL_USERNAME: &str = "@nectar_fake_channel";
pub const CHANNEL_ID: i64 = -1_009_876_543_210;
/// A user who blocked the bot: 403.
pub const BLOCKED_CHAT: i64 = 222_222_222;
/// A group that was upgraded to [`GROUP_CHAT`]: 400 with `migrate_to_chat_id`.
pub const MIGRATED_CHAT: i64 = -123_456_789;
pub const MAX_TEXT: usize = 4096;
const HTML_TAGS: &str = "b strong i em u ins s strike del span tg-spoiler a tg-emoji code pre blockquote";

type Shared = Arc<Mutex<Vec<Value>>>;

/// A running fake Bot API.
#[derive(Debug, Clone)]
pub struct FakeTelegram {
    pub server: FakeServer,
    script: Script,
    messages: Shared,
}

impl FakeTelegram {
    pub async fn start() -> Self {
        let script = Script::new();
        let messages = Shared::default();
        let router = Router::new()
            .route("/{bot}/{method}", any(call))
            .with_state((script.clone(), messages.clone()));
        let contract = Contract {
            is_write: |_, path| path.to_ascii_lowercase().ends_with("/sendmessage"),
            server_error: || failure(StatusCode::INTERNAL_SERVER_ERROR, "Internal Server Error", None),
            throttled: |_, secs| flood(secs),
        };
        let server = FakeServer::start(router, &script, contract).await;
        Self {
            server,
            script,
            messages,
        }
    }

    /// The Bot API base (`api_url`); methods are at `{api_url}/bot<token>/<method>`.
    pub fn api_url(&self) -> &str {
        &self.server.base
    }

    /// `…/bot<token>/<method>` with the valid token.
    pub fn method_url(&self, method: &str) -> String {
        format!("{}/bot{BOT_TOKEN}/{method}", self.server.base)
    }

    /// The messages sent to `chat_id`.
    pub fn messages_in(&self, chat_id: i64) -> Vec<Value> {
        let all = self.messages.lock().expect("telegram").clone();
        all.into_iter().filter(|m| m["chat"]["id"] == chat_id).collect()
    }
}

impl VendorFake for FakeTelegram {
    fn script(&self) -> &Script {
        &self.script
    }

    /// Every sent Message, in order (each names its chat).
    fn stored(&self) -> Vec<Value> {
        self.messages.lock().expect("telegram").clone()
    }
}

fn failure(status: StatusCode, description: &str, parameters: Option<Value>) -> Response {
    let mut body = json!({"ok": false, "error_code": status.as_u16(), "description": description});
    if let Some(p) = parameters {
        body["parameters"] = p;
    }
    harness::json(status, &body)
}

fn flood(secs: u64) -> Response {
    let description = format!("Too Many Requests: retry after {secs}");
    failure(
        StatusCode::TOO_MANY_REQUESTS,
        &description,
        Some(json!({"retry_after": secs})),
    )
}

fn bad_request(description: &str) -> Response {
    failure(StatusCode::BAD_REQUEST, &format!("Bad Request: {description}"), None)
}

fn bot_user() -> Value {
    json!({"id": BOT_ID, "is_bot": true, "first_name": "Nectar Fake", "username": BOT_USERNAME})
}

/// The chat a `chat_id` names, or the Bot API's refusal.
#[allow(clippy::result_large_err)] // the refusal is the vendor's whole answer
fn chat(chat_id: Option<&Value>) -> Result<Value, Response> {
    let id = match chat_id {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(s)) if s == CHANNEL_USERNAME => Some(CHANNEL_ID),
        Some(Value::String(s)) if !s.is_empty() => s.parse().ok(),
        _ => return Err(bad_request("chat_id is empty")),
    };
    match id {
        Some(PRIVATE_CHAT) => Ok(json!({"id": PRIVATE_CHAT, "type": "private", "first_name": "Lead"})),
        Some(GROUP_CHAT) => Ok(json!({"id": GROUP_CHAT, "type": "supergroup", "title": "Nectar leads"})),
        Some(CHANNEL_ID) => Ok(json!({"id": CHANNEL_ID, "type": "channel", "title": "Nectar",
                                      "username": &CHANNEL_USERNAME[1..]})),
        Some(BLOCKED_CHAT) => Err(failure(
            StatusCode::FORBIDDEN,
            "Forbidden: bot was blocked by the user",
            None,
        )),
        Some(MIGRATED_CHAT) => Err(failure(
            StatusCode::BAD_REQUEST,
            "Bad Request: group chat was upgraded to a supergroup chat",
            Some(json!({"migrate_to_chat_id": GROUP_CHAT})),
        )),
        _ => Err(bad_request("chat not found")),
    }
}

/// The text as the user sees it (approximately), or the entity-parsing error.
fn parse_entities(text: &str, parse_mode: Option<&str>) -> Result<String, String> {
    match parse_mode {
        None | Some("" | "Markdown") => Ok(text.to_owned()),
        Some("MarkdownV2") => {
            let (mut out, mut chars, mut in_code) = (String::new(), text.chars(), false);
            while let Some(c) = chars.next() {
                match c {
                    '\\' => out.extend(chars.next()),
                    '`' => in_code = !in_code,
                    '#' | '+' | '-' | '=' | '{' | '}' | '.' | '!' if !in_code => {
                        return Err(format!(
                            "Character '{c}' is reserved and must be escaped with the preceding '\\'"
                        ));
                    }
                    '*' | '_' | '~' | '|' | '[' | ']' if !in_code => {}
                    c => out.push(c),
                }
            }
            Ok(out)
        }
        Some("HTML") => {
            let mut out = String::new();
            let mut rest = text;
            while let Some(start) = rest.find('<') {
                out.push_str(&rest[..start]);
                let end = rest[start..].find('>').ok_or("Can't find end of the tag")? + start;
                let name = rest[start + 1..end]
                    .trim_start_matches('/')
                    .split([' ', '='])
                    .next()
                    .unwrap_or_default();
                if !HTML_TAGS.split(' ').any(|t| t.eq_ignore_ascii_case(name)) {
                    let offset = text.len() - rest.len() + start;
                    return Err(format!("Unsupported start tag \"{name}\" at byte offset {offset}"));
                }
                rest = &rest[end + 1..];
            }
            out.push_str(rest);
            let entities = [("&lt;", "<"), ("&gt;", ">"), ("&quot;", "\""), ("&amp;", "&")];
            Ok(entities.iter().fold(out, |text, (from, to)| text.replace(from, to)))
        }
        Some(_) => Err(String::new()),
    }
}

/// Query string and body parameters, as the Bot API merges them.
#[allow(clippy::result_large_err)] // the refusal is the vendor's whole answer
fn params(query: Option<&str>, headers: &HeaderMap, body: &[u8]) -> Result<HashMap<String, Value>, Response> {
    let form = |bytes: &[u8]| serde_urlencoded::from_bytes::<Vec<(String, String)>>(bytes).unwrap_or_default();
    let mut params: HashMap<String, Value> = form(query.unwrap_or_default().as_bytes())
        .into_iter()
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    match harness::media_type(headers).as_deref() {
        _ if body.is_empty() => {}
        Some("application/json") => match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(map)) => params.extend(map),
            _ => return Err(bad_request("can't parse JSON object")),
        },
        Some("application/x-www-form-urlencoded") => {
            params.extend(form(body).into_iter().map(|(k, v)| (k, Value::String(v))))
        }
        _ => return Err(bad_request("fake: only query, form and JSON parameters are parsed")),
    }
    Ok(params)
}

async fn call(
    State((script, messages)): State<(Script, Shared)>,
    Path((bot, method)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    http_method: Method,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let not_found = || failure(StatusCode::NOT_FOUND, "Not Found", None);
    let Some((id, secret)) = bot.strip_prefix("bot").and_then(|t| t.split_once(':')) else {
        return not_found();
    };
    let well_formed = !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()) && secret.len() >= 30;
    if !well_formed || !(http_method == Method::GET || http_method == Method::POST) {
        return not_found();
    }
    if bot[3..] != *BOT_TOKEN {
        return failure(StatusCode::UNAUTHORIZED, "Unauthorized", None);
    }
    let params = match params(query.as_deref(), &headers, &body) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let ok = |result: Value| harness::json(StatusCode::OK, &json!({"ok": true, "result": result}));
    match method.to_ascii_lowercase().as_str() {
        "getme" => {
            let mut me = bot_user();
            let extra = json!({"can_join_groups": true, "can_read_all_group_messages": false,
                               "supports_inline_queries": false});
            me.as_object_mut()
                .expect("user")
                .extend(extra.as_object().cloned().unwrap_or_default());
            ok(me)
        }
        "sendmessage" => {
            let chat = match chat(params.get("chat_id")) {
                Ok(c) => c,
                Err(r) => return r,
            };
            let text = match params.get("text") {
                Some(Value::String(t)) if !t.is_empty() => t.clone(),
                Some(Value::Number(n)) => n.to_string(),
                _ => return bad_request("message text is empty"),
            };
            let parse_mode = params.get("parse_mode").and_then(Value::as_str);
            let shown = match parse_entities(&text, parse_mode) {
                Ok(t) => t,
                Err(e) if e.is_empty() => return bad_request("unsupported parse_mode"),
                Err(e) => return bad_request(&format!("can't parse entities: {e}")),
            };
            if shown.trim().is_empty() {
                return bad_request("message text is empty");
            }
            if shown.chars().count() > MAX_TEXT {
                return bad_request("message is too long");
            }
            match script.verdict(&String::from_utf8_lossy(&body)) {
                Verdict::Refuse => {
                    return bad_request("can't parse entities: Can't find end of the entity starting at byte offset 0");
                }
                Verdict::FailOnce => return (StatusCode::BAD_GATEWAY, "<html>502 Bad Gateway</html>").into_response(),
                Verdict::Accept => {}
            }
            let mut all = messages.lock().expect("telegram");
            let message_id = all.iter().filter(|m| m["chat"]["id"] == chat["id"]).count() + 1;
            let message = json!({"message_id": message_id, "from": bot_user(), "chat": chat,
                                 "date": harness::now_secs(), "text": shown});
            all.push(message.clone());
            ok(message)
        }
        _ => not_found(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn send(fake: &FakeTelegram, body: Value) -> (u16, Value) {
        let r = reqwest::Client::new()
            .post(fake.method_url("sendMessage"))
            .json(&body)
            .send()
            .await
            .expect("send");
        (r.status().as_u16(), r.json().await.expect("json"))
    }

    #[tokio::test]
    async fn sends_and_fails_with_http_status_equal_to_error_code() {
        let fake = FakeTelegram::start().await;
        let (status, body) = send(
            &fake,
            json!({"chat_id": PRIVATE_CHAT, "text": "*lead* 1\\.", "parse_mode": "MarkdownV2"}),
        )
        .await;
        assert_eq!(
            (status, body["ok"].as_bool(), body["result"]["text"].as_str()),
            (200, Some(true), Some("lead 1."))
        );
        let form = [
            ("chat_id", CHANNEL_USERNAME),
            ("text", "<b>lead</b> 2"),
            ("parse_mode", "HTML"),
        ];
        let r = reqwest::Client::new()
            .post(fake.method_url("sendmessage"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(serde_urlencoded::to_string(form).expect("form"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        assert_eq!(fake.messages_in(CHANNEL_ID).len(), 1);

        let (status, body) = send(&fake, json!({"chat_id": 42, "text": "x"})).await;
        assert_eq!(
            (status, body["description"].as_str()),
            (400, Some("Bad Request: chat not found"))
        );
        let (status, _) = send(&fake, json!({"chat_id": BLOCKED_CHAT, "text": "x"})).await;
        assert_eq!(status, 403);
        let (status, body) = send(&fake, json!({"chat_id": MIGRATED_CHAT, "text": "x"})).await;
        assert_eq!(
            (status, body["parameters"]["migrate_to_chat_id"].as_i64()),
            (400, Some(GROUP_CHAT))
        );
        let (status, _) = send(
            &fake,
            json!({"chat_id": PRIVATE_CHAT, "text": "a.b", "parse_mode": "MarkdownV2"}),
        )
        .await;
        assert_eq!(status, 400);
        let (status, _) = send(&fake, json!({"chat_id": PRIVATE_CHAT, "text": "x".repeat(4097)})).await;
        assert_eq!(status, 400);

        let wrong = fake.method_url("getMe").replace("AAFake", "AAWrong");
        let r = reqwest::get(wrong).await.expect("get");
        assert_eq!(r.status(), 401);
        assert_eq!(r.json::<Value>().await.expect("json")["description"], "Unauthorized");
        assert_eq!(reqwest::get(fake.method_url("getMe")).await.expect("get").status(), 200);
        assert_eq!(fake.stored().len(), 2);
    }

    #[tokio::test]
    async fn flood_control_is_429_with_retry_after_parameter() {
        let fake = FakeTelegram::start().await;
        fake.script().throttle_next(1, 11);
        let (status, body) = send(&fake, json!({"chat_id": PRIVATE_CHAT, "text": "x"})).await;
        assert_eq!((status, body["error_code"].as_u64()), (429, Some(429)));
        assert_eq!(body["description"], "Too Many Requests: retry after 11");
        assert_eq!(body["parameters"]["retry_after"], 11);
        assert!(fake.stored().is_empty());
    }
}
