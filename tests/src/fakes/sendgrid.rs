//! A fake SendGrid v3 Mail Send (`POST /v3/mail/send`), checked and answered as Twilio
//! SendGrid documents it.
//!
//! Sources:
//! - Mail Send — <https://www.twilio.com/docs/sendgrid/api-reference/mail-send/mail-send>:
//!   `Authorization: Bearer <API key>`, JSON body `{"personalizations": [{"to", "cc"?, "bcc"?,
//!   "subject"?, "custom_args"?, …}], "from": {"email", "name"?}, "subject", "content": [{"type",
//!   "value"}] | "template_id"}`; answers `202 Accepted` with an empty body and an
//!   `X-Message-Id` header — accepted for delivery, not delivered. At most 1000 personalizations
//!   and 1000 recipients (to + cc + bcc) a request; each personalization is one e-mail; the total
//!   message is limited to 30 MB. There is no idempotency key: a resend is a second e-mail
//!   ([`VendorFake::stored`] keeps both).
//! - Errors — <https://www.twilio.com/docs/sendgrid/api-reference/mail-send/errors>: 400 with
//!   `{"errors": [{"message", "field", "help"}]}`, e.g. "You must have at least one
//!   personalization.", "There is a limit of 1000 total recipients (to + cc + bcc) per request.",
//!   "Each email address in the personalization block should be unique between to, cc, and bcc.
//!   …" (field `personalizations.N`), "The to array is required for all personalization objects,
//!   and must have at least one email object with a valid email address." (field
//!   `personalizations.N.to`), "The content value must be a string at least one character in
//!   length." (field `content.N.value`).
//! - Rate limits — <https://www.twilio.com/docs/sendgrid/api-reference/how-to-use-the-sendgrid-v3-api/rate-limits>:
//!   `X-RateLimit-Limit`, `-Remaining`, `-Reset` (epoch seconds) on answers; a 429 has the body
//!   `{"errors": [{"field": null, "message": "too many requests"}]}` and no `Retry-After`.
//!
//! The fake's wording: the 401 message ("The provided authorization grant is invalid, expired, or
//! revoked", as SendGrid words it in practice), the `from`/`subject`/`content` requirement
//! texts. Injections: outage 500; `refuse` → 400 "Does not contain a valid address." (field
//! `personalizations.0.to.0.email`); `fail_once` → 500 once.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::harness::{self, Contract, FakeServer, Script, VendorFake, Verdict};

pub const API_KEY: &str = "SG.nectarFakeKey0123456789.abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQ";
pub const MAX_PERSONALIZATIONS: usize = 1000;
pub const MAX_RECIPIENTS: usize = 1000;
const MAX_BYTES: usize = 30 * 1024 * 1024;
const HELP: &str = "http://sendgrid.com/docs/API_Reference/Web_API_v3/Mail/errors.html";

type Shared = Arc<Mutex<Vec<Value>>>;

/// A running fake SendGrid.
#[derive(Debug, Clone)]
pub struct FakeSendgrid {
    pub server: FakeServer,
    script: Script,
    emails: Shared,
}

impl FakeSendgrid {
    pub async fn start() -> Self {
        let script = Script::new();
        let emails = Shared::default();
        let router = Router::new()
            .route("/v3/mail/send", post(send))
            .layer(axum::middleware::map_response(rate_headers))
            .with_state((script.clone(), emails.clone()));
        let contract = Contract {
            is_write: harness::non_get_writes,
            server_error: || errors(StatusCode::INTERNAL_SERVER_ERROR, &[("internal error", None)]),
            throttled: |_, secs| {
                let mut r = errors(StatusCode::TOO_MANY_REQUESTS, &[("too many requests", None)]);
                r.headers_mut().insert("x-ratelimit-remaining", 0.into());
                r.headers_mut()
                    .insert("x-ratelimit-reset", (harness::now_secs() + secs as i64).into());
                r
            },
        };
        let server = FakeServer::start(router, &script, contract).await;
        Self { server, script, emails }
    }

    /// The API host (`https://api.sendgrid.com` in production).
    pub fn base_url(&self) -> &str {
        &self.server.base
    }

    pub fn send_url(&self) -> String {
        format!("{}/v3/mail/send", self.server.base)
    }
}

impl VendorFake for FakeSendgrid {
    fn script(&self) -> &Script {
        &self.script
    }

    /// The e-mails accepted, one per personalization, resends included: `{"to", "cc", "bcc",
    /// "from", "subject", "custom_args", "content", "template_id", "message_id"}`.
    fn stored(&self) -> Vec<Value> {
        self.emails.lock().expect("sendgrid").clone()
    }
}

async fn rate_headers(mut response: Response) -> Response {
    let h = response.headers_mut();
    if !h.contains_key("x-ratelimit-limit") {
        h.insert("x-ratelimit-limit", 600.into());
        h.entry("x-ratelimit-remaining").or_insert(599.into());
        h.entry("x-ratelimit-reset")
            .or_insert((harness::now_secs() + 60).into());
    }
    response
}

fn errors(status: StatusCode, list: &[(&str, Option<&str>)]) -> Response {
    let errors: Vec<Value> = list
        .iter()
        .map(|(message, field)| {
            let help = field.map(|f| format!("{HELP}#message.{}", f.split('.').next().unwrap_or_default()));
            json!({"message": message, "field": field, "help": help})
        })
        .collect();
    harness::json(status, &json!({"errors": errors}))
}

fn valid_email(v: &Value) -> Option<String> {
    let email = v["email"].as_str()?.trim().to_lowercase();
    let (local, domain) = email.split_once('@')?;
    (!local.is_empty() && domain.contains('.') && !email.contains(char::is_whitespace)).then_some(email)
}

/// SendGrid's validation errors for a mail/send body: `(message, field)`.
fn check(mail: &Value) -> Vec<(String, Option<String>)> {
    let mut found = Vec::new();
    let mut err = |m: &str, f: &str| found.push((m.to_owned(), (!f.is_empty()).then(|| f.to_owned())));
    let personalizations = mail["personalizations"].as_array().cloned().unwrap_or_default();
    if personalizations.is_empty() {
        err("You must have at least one personalization.", "personalizations");
    } else if personalizations.len() > MAX_PERSONALIZATIONS {
        let n = personalizations.len();
        err(
            &format!(
                "The personalization block is limited to 1000 personalizations per API request. You have provided {n} personalizations. Please consider splitting this into multiple requests and resending your request."
            ),
            "personalizations",
        );
    }
    let mut recipients = 0;
    for (i, p) in personalizations.iter().enumerate() {
        if p["to"].as_array().is_none_or(Vec::is_empty) {
            err(
                "The to array is required for all personalization objects, and must have at least one email object with a valid email address.",
                &format!("personalizations.{i}.to"),
            );
        }
        let mut seen = HashSet::new();
        for kind in ["to", "cc", "bcc"] {
            for (j, r) in p[kind].as_array().into_iter().flatten().enumerate() {
                recipients += 1;
                match valid_email(r) {
                    None => err(
                        "Does not contain a valid address.",
                        &format!("personalizations.{i}.{kind}.{j}.email"),
                    ),
                    Some(e) if !seen.insert(e.clone()) => err(
                        &format!(
                            "Each email address in the personalization block should be unique between to, cc, and bcc. We found the first duplicate instance of [{e}] in the personalizations.{i}.{kind} field."
                        ),
                        &format!("personalizations.{i}"),
                    ),
                    Some(_) => {}
                }
            }
        }
    }
    if recipients > MAX_RECIPIENTS {
        err(
            "There is a limit of 1000 total recipients (to + cc + bcc) per request.",
            "personalizations",
        );
    }
    if valid_email(&mail["from"]).is_none() {
        err(
            "The from object must be provided for every email send. It is an object that requires the email parameter, but may also contain a name parameter.",
            "from.email",
        );
    }
    let templated = mail["template_id"].is_string();
    let subject_everywhere = personalizations
        .iter()
        .all(|p| p["subject"].as_str().is_some_and(|s| !s.is_empty()));
    if !templated && !subject_everywhere && mail["subject"].as_str().is_none_or(str::is_empty) {
        err(
            "The subject is required. You can get around this requirement if you use a template with a subject defined or if every personalization has a subject defined.",
            "subject",
        );
    }
    match mail["content"].as_array() {
        None if templated => {}
        None => err(
            "Unless a valid template_id is provided, the content parameter is required. There must be at least one defined content block.",
            "content",
        ),
        Some(blocks) => {
            for (k, block) in blocks.iter().enumerate() {
                if block["value"].as_str().is_none_or(str::is_empty) {
                    err(
                        "The content value must be a string at least one character in length.",
                        &format!("content.{k}.value"),
                    );
                }
            }
        }
    }
    found
}

async fn send(State((script, emails)): State<(Script, Shared)>, headers: HeaderMap, body: Bytes) -> Response {
    let key = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if key != Some(API_KEY) {
        return errors(
            StatusCode::UNAUTHORIZED,
            &[("The provided authorization grant is invalid, expired, or revoked", None)],
        );
    }
    if body.len() > MAX_BYTES {
        return errors(
            StatusCode::PAYLOAD_TOO_LARGE,
            &[("The JSON payload you have included in your request is too large.", None)],
        );
    }
    let Ok(mail @ Value::Object(_)) = serde_json::from_slice::<Value>(&body) else {
        return errors(StatusCode::BAD_REQUEST, &[("Bad Request", None)]);
    };
    let problems = check(&mail);
    if !problems.is_empty() {
        let list: Vec<(&str, Option<&str>)> = problems.iter().map(|(m, f)| (m.as_str(), f.as_deref())).collect();
        return errors(StatusCode::BAD_REQUEST, &list);
    }
    match script.verdict(&String::from_utf8_lossy(&body)) {
        Verdict::Refuse => {
            // A recipient SendGrid will not take (its documented per-address validation error).
            let field = "personalizations.0.to.0.email";
            return errors(
                StatusCode::BAD_REQUEST,
                &[("Does not contain a valid address.", Some(field))],
            );
        }
        Verdict::FailOnce => return errors(StatusCode::INTERNAL_SERVER_ERROR, &[("internal error", None)]),
        Verdict::Accept => {}
    }
    let message_id = uuid::Uuid::new_v4().simple().to_string();
    let mut all = emails.lock().expect("sendgrid");
    for p in mail["personalizations"].as_array().into_iter().flatten() {
        all.push(
            json!({"to": p["to"], "cc": p["cc"], "bcc": p["bcc"], "from": mail["from"],
                        "subject": if p["subject"].is_null() { &mail["subject"] } else { &p["subject"] },
                        "custom_args": p["custom_args"], "content": mail["content"],
                        "template_id": mail["template_id"], "message_id": message_id}),
        );
    }
    let mut r = StatusCode::ACCEPTED.into_response();
    r.headers_mut()
        .insert("x-message-id", HeaderValue::from_str(&message_id).expect("header"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mail(to: &[&str]) -> Value {
        let to: Vec<Value> = to.iter().map(|e| json!({"email": e})).collect();
        json!({"personalizations": [{"to": to, "custom_args": {"event_id": "e-1"}}], "from": {"email": "leads@nectar.dev"},
               "subject": "New lead", "content": [{"type": "text/plain", "value": "Hello"}]})
    }

    async fn send(fake: &FakeSendgrid, key: &str, body: &Value) -> reqwest::Response {
        reqwest::Client::new()
            .post(fake.send_url())
            .bearer_auth(key)
            .json(body)
            .send()
            .await
            .expect("send")
    }

    #[tokio::test]
    async fn accepts_with_202_and_refuses_as_sendgrid() {
        let fake = FakeSendgrid::start().await;
        let r = send(&fake, API_KEY, &mail(&["a@example.com"])).await;
        assert_eq!(r.status(), 202);
        assert!(r.headers().contains_key("x-message-id") && r.headers().contains_key("x-ratelimit-remaining"));
        send(&fake, API_KEY, &mail(&["a@example.com"])).await;
        assert_eq!(fake.stored().len(), 2, "no idempotency: a resend is a second e-mail");

        let r = send(&fake, API_KEY, &mail(&["b@example.com", "B@example.com"])).await;
        assert_eq!(r.status(), 400);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["errors"][0]["field"], "personalizations.0");
        let r = send(&fake, "SG.wrong", &mail(&["a@example.com"])).await;
        assert_eq!(r.status(), 401);

        fake.script().throttle_next(1, 30);
        let r = send(&fake, API_KEY, &mail(&["a@example.com"])).await;
        assert_eq!(
            (r.status().as_u16(), r.headers()["x-ratelimit-remaining"].to_str().ok()),
            (429, Some("0"))
        );
        assert!(r.headers().get("retry-after").is_none());
        assert_eq!(
            r.json::<Value>().await.expect("json")["errors"][0]["message"],
            "too many requests"
        );
        assert_eq!(fake.stored().len(), 2);
    }
}
