//! A fake Microsoft Teams Workflows webhook: the Power Automate flow "Post to a channel when a
//! webhook request is received", as a sink posting an Adaptive Card sees it.
//!
//! From Microsoft's docs:
//! - The trigger is a Logic Apps Request trigger —
//!   <https://learn.microsoft.com/azure/connectors/connectors-native-reqres>: `POST` with
//!   `Content-Type: application/json`; with Schema Validation on, a body that does not match the
//!   trigger's schema is refused with `400 Bad Request`; a flow without a Response action answers
//!   `202 Accepted` at once, before its actions run.
//! - The card envelope — <https://learn.microsoft.com/microsoftteams/platform/webhooks-and-connectors/how-to/connectors-using>
//!   ("Send adaptive cards using an incoming webhook"): `{"type": "message", "attachments":
//!   [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": null, "content":
//!   {"type": "AdaptiveCard", "version", "body": [...]}}]}`.
//! - Message size — <https://learn.microsoft.com/connectors/teams/> (known issues): a posted
//!   message is limited to about 28 KB; above it the *action* fails with "Request Entity too
//!   large". The HTTP caller has already had its 202, so the fake answers 202 and records a
//!   failed run ([`FakeTeams::failed_runs`]) — nothing is posted. The same holds for a card the
//!   post action cannot render (wrong `contentType`, no `AdaptiveCard`/`version`/`body`).
//! - Connector rate limits (4 requests a second; 429) and the 28 KB figure —
//!   <https://learn.microsoft.com/microsoftteams/platform/webhooks-and-connectors/how-to/add-incoming-webhook>.
//!
//! From third-party material (Microsoft publishes no reference page for these):
//! - The URL shape `/workflows/{id}/triggers/manual/paths/invoke?api-version=2016-06-01&sp=
//!   %2Ftriggers%2Fmanual%2Frun&sv=1.0&sig=…` (also `/powerautomate/automations/direct/workflows/
//!   {id}/…?api-version=1&…`), the SAS `sig` being the only credential.
//! - Logic Apps error bodies `{"error": {"code", "message"}}`: a missing SAS →
//!   401 `DirectApiAuthorizationRequired` (quoted in MicrosoftDocs/azure-docs issue #60706), a
//!   wrong `sig` → 401 `DirectApiInvalidAuthorizationSignature` "The provided authorization
//!   signature is not valid.", an unknown flow → 404 `WorkflowNotFound`, a schema mismatch →
//!   400 `TriggerInputSchemaMismatch`, a throttle → 429 `WorkflowRequestsThrottled` with
//!   `Retry-After`.
//!
//! Injections: outage 502; `refuse` → 400 `TriggerInputSchemaMismatch`; `fail_once` → 503
//! `ServiceUnavailable` once.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::{Value, json};

use super::harness::{self, Contract, FakeServer, Script, VendorFake, Verdict};

pub const WORKFLOW_ID: &str = "3f6c8a2e1b4d4e9fa7c52d8b6e0f1a3c";
/// The SAS signature in the flow's URL: the credential.
pub const SIG: &str = "nEcTaRfAkEsIgNaTuRe0123456789abcdefGHIJKLMNO";
pub const API_VERSION: &str = "2016-06-01";
/// The message size limit of the Teams post action.
pub const MAX_MESSAGE_BYTES: usize = 28 * 1024;
const ADAPTIVE: &str = "application/vnd.microsoft.card.adaptive";

#[derive(Debug, Default)]
struct Store {
    posted: Vec<Value>,
    failed_runs: Vec<(Value, String)>,
}

type Shared = Arc<Mutex<Store>>;

/// A running fake Workflows webhook.
#[derive(Debug, Clone)]
pub struct FakeTeams {
    pub server: FakeServer,
    script: Script,
    state: Shared,
}

impl FakeTeams {
    pub async fn start() -> Self {
        let script = Script::new();
        let state = Shared::default();
        let invoke = post(invoke);
        let router = Router::new()
            .route("/workflows/{id}/triggers/manual/paths/invoke", invoke.clone())
            .route(
                "/powerautomate/automations/direct/workflows/{id}/triggers/manual/paths/invoke",
                invoke,
            )
            .with_state((script.clone(), state.clone()));
        let contract = Contract {
            is_write: harness::non_get_writes,
            server_error: || (StatusCode::BAD_GATEWAY, "<html><body>Bad Gateway</body></html>").into_response(),
            throttled: |_, secs| {
                let message = format!("Number of requests for workflow '{WORKFLOW_ID}' exceeded the limit.");
                let mut r = error(StatusCode::TOO_MANY_REQUESTS, "WorkflowRequestsThrottled", &message);
                r.headers_mut().insert(header::RETRY_AFTER, secs.into());
                r
            },
        };
        let server = FakeServer::start(router, &script, contract).await;
        Self { server, script, state }
    }

    pub fn base_url(&self) -> &str {
        &self.server.base
    }

    /// The flow's HTTP POST URL, as the Workflows app shows it.
    pub fn webhook_url(&self) -> String {
        format!(
            "{}/workflows/{WORKFLOW_ID}/triggers/manual/paths/invoke?api-version={API_VERSION}\
             &sp=%2Ftriggers%2Fmanual%2Frun&sv=1.0&sig={SIG}",
            self.server.base
        )
    }

    /// Flow runs that failed after the 202 (the card, and the action's error); nothing was posted.
    pub fn failed_runs(&self) -> Vec<(Value, String)> {
        self.state.lock().expect("teams").failed_runs.clone()
    }
}

impl VendorFake for FakeTeams {
    fn script(&self) -> &Script {
        &self.script
    }

    /// The Adaptive Cards posted to the channel, one per attachment.
    fn stored(&self) -> Vec<Value> {
        self.state.lock().expect("teams").posted.clone()
    }
}

fn error(status: StatusCode, code: &str, message: &str) -> Response {
    harness::json(status, &json!({"error": {"code": code, "message": message}}))
}

fn schema_mismatch(details: &str) -> Response {
    let message = format!(
        "The input body for trigger 'manual' of type 'Request' did not match its schema definition. \
         Error details: '{details}'."
    );
    error(StatusCode::BAD_REQUEST, "TriggerInputSchemaMismatch", &message)
}

/// Why the post action would fail on this attachment, if it would.
fn action_failure(attachment: &Value) -> Option<String> {
    if attachment.get("contentType").and_then(Value::as_str) != Some(ADAPTIVE) {
        return Some(format!("attachment contentType must be '{ADAPTIVE}'"));
    }
    let card = attachment.get("content")?;
    if card.get("type").and_then(Value::as_str) != Some("AdaptiveCard") {
        return Some("card type must be 'AdaptiveCard'".into());
    }
    if !card.get("version").is_some_and(Value::is_string) || !card.get("body").is_some_and(Value::is_array) {
        return Some("the card needs a version and a body".into());
    }
    (card.to_string().len() > MAX_MESSAGE_BYTES).then(|| "Request Entity too large".into())
}

async fn invoke(
    State((script, state)): State<(Script, Shared)>,
    Path(id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if id != WORKFLOW_ID {
        let message = format!("The workflow '{id}' could not be found.");
        return error(StatusCode::NOT_FOUND, "WorkflowNotFound", &message);
    }
    if !query.contains_key("api-version") {
        let message = "The api-version query parameter (?api-version=) is required for all requests.";
        return error(StatusCode::BAD_REQUEST, "MissingApiVersionParameter", message);
    }
    let sas = ["sp", "sv", "sig"].map(|k| query.get(k));
    if sas.iter().any(Option::is_none) {
        let message = "The request must be authenticated only by Shared Access scheme.";
        return error(StatusCode::UNAUTHORIZED, "DirectApiAuthorizationRequired", message);
    }
    if sas[2].map(String::as_str) != Some(SIG) || sas[0].map(String::as_str) != Some("/triggers/manual/run") {
        let message = "The provided authorization signature is not valid.";
        return error(
            StatusCode::UNAUTHORIZED,
            "DirectApiInvalidAuthorizationSignature",
            message,
        );
    }
    if harness::media_type(&headers).as_deref() != Some("application/json") {
        return schema_mismatch("Invalid type. Expected Object but got String.");
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return schema_mismatch("Invalid type. Expected Object but got String.");
    };
    if payload.get("type").and_then(Value::as_str) != Some("message") {
        return schema_mismatch("Value \"message\" is required for property 'type'.");
    }
    let Some(attachments) = payload
        .get("attachments")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
    else {
        return schema_mismatch("Required property 'attachments' not found in JSON or empty.");
    };
    match script.verdict(&String::from_utf8_lossy(&body)) {
        Verdict::Refuse => return schema_mismatch("refused by the test script"),
        Verdict::FailOnce => return error(StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "Try again."),
        Verdict::Accept => {}
    }
    let mut store = state.lock().expect("teams");
    for attachment in attachments {
        match action_failure(attachment) {
            Some(reason) => store.failed_runs.push((attachment.clone(), reason)),
            None => store.posted.push(attachment["content"].clone()),
        }
    }
    StatusCode::ACCEPTED.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn card(text: &str) -> Value {
        json!({"type": "message", "attachments": [{"contentType": ADAPTIVE, "contentUrl": null,
               "content": {"$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
                           "type": "AdaptiveCard", "version": "1.4",
                           "body": [{"type": "TextBlock", "text": text, "wrap": true}]}}]})
    }

    async fn post(url: &str, body: &Value) -> reqwest::Response {
        reqwest::Client::new().post(url).json(body).send().await.expect("send")
    }

    #[tokio::test]
    async fn accepts_cards_with_202_and_refuses_as_logic_apps() {
        let fake = FakeTeams::start().await;
        let url = fake.webhook_url();
        let r = post(&url, &card("lead 1")).await;
        assert_eq!(r.status(), 202);
        assert_eq!(fake.stored()[0]["body"][0]["text"], "lead 1");

        let r = post(&url.replace(SIG, "wrong"), &card("x")).await;
        assert_eq!(r.status(), 401);
        let body: Value = r.json().await.expect("json");
        assert_eq!(body["error"]["code"], "DirectApiInvalidAuthorizationSignature");
        let r = post(&url, &json!({"text": "old connector format"})).await;
        assert_eq!(r.status(), 400);

        // Too big for the post action: the caller still hears 202, the run fails.
        assert_eq!(post(&url, &card(&"x".repeat(MAX_MESSAGE_BYTES))).await.status(), 202);
        assert_eq!(fake.failed_runs()[0].1, "Request Entity too large");
        assert_eq!(fake.stored().len(), 1);
    }

    #[tokio::test]
    async fn throttles_with_retry_after() {
        let fake = FakeTeams::start().await;
        fake.script().throttle_next(1, 5);
        let r = post(&fake.webhook_url(), &card("x")).await;
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "5");
        assert!(fake.stored().is_empty());
    }
}
