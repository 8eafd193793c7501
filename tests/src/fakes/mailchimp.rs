//! A fake Mailchimp Marketing API: the member upsert and tag calls an audience sink makes, and
//! the ping a sink uses as its start check, answered as Mailchimp documents them.
//!
//! Sources:
//! - Add or update list member — <https://mailchimp.com/developer/marketing/api/list-members/add-or-update-list-member/>:
//!   `PUT /3.0/lists/{list_id}/members/{subscriber_hash}`, the hash being the MD5 of the
//!   lower-cased e-mail (the path also takes the address itself); body `email_address`,
//!   `status_if_new` (required when the member is new), `status`, `merge_fields`; `status` is one
//!   of subscribed, unsubscribed, cleaned, pending, transactional. Answers the member.
//! - Add or remove member tags — <https://mailchimp.com/developer/marketing/api/list-member-tags/add-or-remove-member-tags/>:
//!   `POST …/members/{subscriber_hash}/tags` `{"tags": [{"name", "status": "active"|"inactive"}],
//!   "is_syncing"?}` → `204 No Content`.
//! - Ping — <https://mailchimp.com/developer/marketing/api/ping/>: `GET /3.0/ping` →
//!   `{"health_status": "Everything's Chimpy!"}`.
//! - Auth — <https://mailchimp.com/developer/marketing/docs/fundamentals/>: HTTP Basic, any user
//!   name, the API key as password; the key's `-usNN` suffix is the data centre (host
//!   `usNN.api.mailchimp.com`); 10 simultaneous connections per key, else 429.
//! - Errors — <https://mailchimp.com/developer/marketing/docs/errors/>: `application/problem+json`
//!   `{"type", "title", "status", "detail", "instance"}`; titles used here: "API Key Missing" and
//!   "API Key Invalid" (401), "JSON Parse Error" and "Invalid Resource" (400, with `errors:
//!   [{"field", "message"}]` for field problems), "Resource Not Found" (404), "Too Many Requests"
//!   (429, no `Retry-After`), "Internal Server Error" (500).
//!
//! The fake's own wording: `detail` of field errors; a path hash that names another address is
//! "Invalid Resource". Injections: `refuse` → 400 "Invalid Resource" (the documented anti-abuse
//! refusal, "signed up to a lot of lists very recently"); `fail_once` → 500 once.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use base64::Engine;
use serde_json::{Value, json};

use super::harness::{self, Contract, FakeServer, Script, VendorFake, Verdict};

pub const API_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f0-us21";
pub const LIST_ID: &str = "a1b2c3d4e5";
const STATUSES: [&str; 5] = ["subscribed", "unsubscribed", "cleaned", "pending", "transactional"];

type Shared = Arc<Mutex<BTreeMap<String, Value>>>;

/// A running fake Mailchimp.
#[derive(Debug, Clone)]
pub struct FakeMailchimp {
    pub server: FakeServer,
    script: Script,
    members: Shared,
}

impl FakeMailchimp {
    pub async fn start() -> Self {
        let script = Script::new();
        let members = Shared::default();
        let router = Router::new()
            .route("/3.0/ping", get(ping))
            .route("/3.0/lists/{list}/members/{hash}", put(upsert))
            .route("/3.0/lists/{list}/members/{hash}/tags", post(tags))
            .with_state((script.clone(), members.clone()));
        let contract = Contract {
            is_write: harness::non_get_writes,
            server_error: || {
                problem(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "Internal Server Error",
                    "An unexpected internal error has occurred.",
                )
            },
            throttled: |_, _| {
                let detail = "You have exceeded the limit of 10 simultaneous connections.";
                problem(StatusCode::TOO_MANY_REQUESTS, "Too Many Requests", detail)
            },
        };
        let server = FakeServer::start(router, &script, contract).await;
        Self {
            server,
            script,
            members,
        }
    }

    /// The API root (`https://us21.api.mailchimp.com/3.0` in production).
    pub fn api_url(&self) -> String {
        format!("{}/3.0", self.server.base)
    }
}

impl VendorFake for FakeMailchimp {
    fn script(&self) -> &Script {
        &self.script
    }

    /// The audience's members, one per subscriber hash, with their tags.
    fn stored(&self) -> Vec<Value> {
        self.members.lock().expect("mailchimp").values().cloned().collect()
    }
}

fn problem(status: StatusCode, title: &str, detail: &str) -> Response {
    problem_with(status, title, detail, Value::Null)
}

fn problem_with(status: StatusCode, title: &str, detail: &str, errors: Value) -> Response {
    let mut body = json!({"type": "https://mailchimp.com/developer/marketing/docs/errors/", "title": title,
                          "status": status.as_u16(), "detail": detail, "instance": uuid::Uuid::new_v4().to_string()});
    if !errors.is_null() {
        body["errors"] = errors;
    }
    let mut r = harness::json(status, &body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json; charset=utf-8"),
    );
    r
}

fn invalid(detail: &str, field: &str, message: &str) -> Response {
    let errors = if field.is_empty() {
        Value::Null
    } else {
        json!([{"field": field, "message": message}])
    };
    problem_with(StatusCode::BAD_REQUEST, "Invalid Resource", detail, errors)
}

/// 401 unless HTTP Basic carries the API key as password.
fn authenticate(headers: &HeaderMap) -> Option<Response> {
    let Some(auth) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) else {
        return Some(problem(
            StatusCode::UNAUTHORIZED,
            "API Key Missing",
            "Your request did not include an API key.",
        ));
    };
    let key = auth
        .strip_prefix("Basic ")
        .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b.trim()).ok())
        .and_then(|b| String::from_utf8(b).ok())
        .and_then(|c| c.split_once(':').map(|(_, key)| key.to_owned()));
    let detail = "Your API key may be invalid, or you've attempted to access the wrong datacenter.";
    (key.as_deref() != Some(API_KEY)).then(|| problem(StatusCode::UNAUTHORIZED, "API Key Invalid", detail))
}

fn not_found() -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "Resource Not Found",
        "The requested resource could not be found.",
    )
}

async fn ping(headers: HeaderMap) -> Response {
    authenticate(&headers)
        .unwrap_or_else(|| harness::json(StatusCode::OK, &json!({"health_status": "Everything's Chimpy!"})))
}

type Ctx = State<(Script, Shared)>;

async fn upsert(
    State((script, members)): Ctx,
    Path((list, hash)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = authenticate(&headers) {
        return r;
    }
    if list != LIST_ID {
        return not_found();
    }
    let Ok(Value::Object(input)) = serde_json::from_slice::<Value>(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "JSON Parse Error",
            "We encountered an unspecified JSON parsing error.",
        );
    };
    let email = input
        .get("email_address")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim()
        .to_owned();
    let (local, domain) = email.split_once('@').unwrap_or_default();
    if local.is_empty() || !domain.contains('.') || email.contains(char::is_whitespace) {
        let detail = format!("{email} looks fake or invalid, please enter a real email address.");
        return invalid(&detail, "email_address", "This value should be a valid email.");
    }
    let id = md5_hex(email.to_lowercase().as_bytes());
    if hash != id && !hash.eq_ignore_ascii_case(&email) {
        return invalid("The subscriber hash in the path does not match email_address.", "", "");
    }
    let status = |key: &str| input.get(key).and_then(Value::as_str);
    if let Some(bad) = [status("status"), status("status_if_new")]
        .into_iter()
        .flatten()
        .find(|s| !STATUSES.contains(s))
    {
        let detail =
            "The resource submitted could not be validated. For field-specific details, see the 'errors' array.";
        return invalid(detail, "status", &format!("Invalid status: {bad}"));
    }
    match script.verdict(&String::from_utf8_lossy(&body)) {
        Verdict::Refuse => {
            let detail = format!(
                "{email} has signed up to a lot of lists very recently; we're not allowing more signups for now"
            );
            return invalid(&detail, "", "");
        }
        Verdict::FailOnce => {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "Internal Server Error",
                "An unexpected internal error has occurred.",
            );
        }
        Verdict::Accept => {}
    }
    let mut all = members.lock().expect("mailchimp");
    if !all.contains_key(&id) {
        let Some(initial) = status("status").or(status("status_if_new")) else {
            let detail =
                "The resource submitted could not be validated. For field-specific details, see the 'errors' array.";
            return invalid(detail, "status_if_new", "This value should not be blank.");
        };
        let now = harness::iso8601(harness::now_millis());
        let member = json!({"id": id, "email_address": email, "unique_email_id": &id[..10], "status": initial,
                            "merge_fields": {}, "tags": [], "list_id": LIST_ID, "timestamp_signup": now});
        all.insert(id.clone(), member);
    }
    let member = all.get_mut(&id).expect("member");
    if let Some(s) = status("status") {
        member["status"] = json!(s);
    }
    if let Some(Value::Object(fields)) = input.get("merge_fields") {
        member["merge_fields"]
            .as_object_mut()
            .expect("merge fields")
            .extend(fields.clone());
    }
    member["last_changed"] = json!(harness::iso8601(harness::now_millis()));
    harness::json(StatusCode::OK, member)
}

async fn tags(
    State((_, members)): Ctx,
    Path((list, hash)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(r) = authenticate(&headers) {
        return r;
    }
    let Ok(input) = serde_json::from_slice::<Value>(&body) else {
        return problem(
            StatusCode::BAD_REQUEST,
            "JSON Parse Error",
            "We encountered an unspecified JSON parsing error.",
        );
    };
    let mut all = members.lock().expect("mailchimp");
    let key = if hash.contains('@') {
        md5_hex(hash.to_lowercase().as_bytes())
    } else {
        hash
    };
    let (Some(member), true) = (all.get_mut(&key), list == LIST_ID) else {
        return not_found();
    };
    let Some(changes) = input.get("tags").and_then(Value::as_array) else {
        return invalid(
            "The resource submitted could not be validated.",
            "tags",
            "This value should not be blank.",
        );
    };
    for tag in changes {
        let (Some(name), Some(status)) = (tag["name"].as_str(), tag["status"].as_str()) else {
            return invalid(
                "The resource submitted could not be validated.",
                "tags",
                "Each tag needs a name and a status.",
            );
        };
        let list = member["tags"].as_array_mut().expect("tags");
        list.retain(|t| t["name"] != name);
        match status {
            "active" => list.push(json!({"name": name})),
            "inactive" => {}
            _ => {
                return invalid(
                    "The resource submitted could not be validated.",
                    "tags",
                    "status must be active or inactive.",
                );
            }
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// MD5 (RFC 1321) in hex, for subscriber hashes.
fn md5_hex(input: &[u8]) -> String {
    use md5::Digest as _;
    hex::encode(md5::Md5::digest(input))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn md5_matches_rfc_1321() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"message digest"), "f96b697d7cb7938d525a2f31aaf161d0");
        let long = b"12345678901234567890123456789012345678901234567890123456789012345678901234567890";
        assert_eq!(md5_hex(long), "57edf4a22be3c955ac49da2e2107b67a");
    }

    #[tokio::test]
    async fn upserts_by_hash_tags_and_refuses_as_mailchimp() {
        let fake = FakeMailchimp::start().await;
        let client = reqwest::Client::new();
        let hash = md5_hex(b"lead@example.com");
        let member_url = format!("{}/lists/{LIST_ID}/members/{hash}", fake.api_url());
        let body = json!({"email_address": "Lead@Example.com", "status_if_new": "subscribed", "merge_fields": {"FNAME": "Ada"}});
        for _ in 0..2 {
            let r = client
                .put(&member_url)
                .basic_auth("nectar", Some(API_KEY))
                .json(&body)
                .send()
                .await
                .expect("send");
            assert_eq!(r.status(), 200);
        }
        let tags = json!({"tags": [{"name": "lead", "status": "active"}]});
        let r = client
            .post(format!("{member_url}/tags"))
            .basic_auth("x", Some(API_KEY))
            .json(&tags)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 204);
        let stored = fake.stored();
        assert_eq!((stored.len(), stored[0]["id"].as_str()), (1, Some(hash.as_str())));
        assert_eq!(
            (
                stored[0]["merge_fields"]["FNAME"].as_str(),
                stored[0]["tags"][0]["name"].as_str()
            ),
            (Some("Ada"), Some("lead"))
        );

        let new = json!({"email_address": "new@example.com"});
        let url = format!("{}/lists/{LIST_ID}/members/new@example.com", fake.api_url());
        let r = client
            .put(&url)
            .basic_auth("x", Some(API_KEY))
            .json(&new)
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 400);
        assert_eq!(r.headers()["content-type"], "application/problem+json; charset=utf-8");
        assert_eq!(
            r.json::<Value>().await.expect("json")["errors"][0]["field"],
            "status_if_new"
        );

        let r = client
            .get(format!("{}/ping", fake.api_url()))
            .basic_auth("x", Some("wrong-us21"))
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401);
        assert_eq!(r.json::<Value>().await.expect("json")["title"], "API Key Invalid");
        fake.script().throttle_next(1, 1);
        let r = client
            .put(&member_url)
            .basic_auth("x", Some(API_KEY))
            .json(&body)
            .send()
            .await
            .expect("send");
        assert_eq!(
            (r.status().as_u16(), r.headers().get("retry-after").is_none()),
            (429, true)
        );
    }
}
