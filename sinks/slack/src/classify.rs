//! Reading Slack's answers. The Web API answers HTTP 200 with `{"ok": false, "error": "<code>"}`
//! for most failures (HTTP 429 with `Retry-After` when rate limited, 5xx when down); incoming
//! webhooks answer `ok` or an error string with an HTTP status.
//!
//! Sources (error lists as Slack documents them):
//! - chat.postMessage errors: <https://docs.slack.dev/reference/methods/chat.postMessage#errors>
//! - errors every Web API method can return (the "common errors" on each method's page), e.g.
//!   <https://api.slack.com/methods/calls.info#errors>
//! - rate limits, HTTP 429 and `Retry-After`: <https://docs.slack.dev/apis/web-api/rate-limits>
//! - incoming webhook errors and their statuses:
//!   <https://api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks> and
//!   <https://docs.slack.dev/messaging/sending-messages-using-incoming-webhooks#handling_errors>

use reqwest::StatusCode;
use reqwest::header::HeaderMap;

use nectar_sink::http::{classify_status, excerpt, retry_after};
use nectar_sink::{DeliveryError, ItemResult, StartError};

/// The token or the app cannot do this anywhere: stop the sink (the start check then says why).
const CREDENTIAL_ERRORS: &[&str] = &[
    "not_authed",
    "invalid_auth",
    "account_inactive",
    "token_revoked",
    "token_expired",
    "no_permission",
    "missing_scope",
    "not_allowed_token_type",
    "team_access_not_granted",
    "two_factor_setup_required",
    "access_denied",
    "accesslimited",
    "enterprise_is_restricted",
    "metadata_must_be_sent_from_app",
];

/// The request itself is malformed for every event (a bug here, or an API change): stop rather
/// than dead-letter every event.
const REQUEST_ERRORS: &[&str] = &[
    "invalid_post_type",
    "missing_post_type",
    "invalid_charset",
    "invalid_form_data",
    "invalid_array_arg",
    "invalid_json",
    "json_not_object",
    "deprecated_endpoint",
    "method_deprecated",
    "unknown_method",
];

/// Slack could not do it now: retry the whole request later (never counted against the event).
const TRANSIENT_ERRORS: &[&str] = &[
    "internal_error",
    "fatal_error",
    "service_unavailable",
    "request_timeout",
    "ratelimited",
    "rate_limited",
    "message_limit_exceeded",
    "team_added_to_org",
    "org_login_required",
];

/// This message can never be posted as it is (its channel, its content): dead-letter it.
const MESSAGE_ERRORS: &[&str] = &[
    "channel_not_found",
    "not_in_channel",
    "is_archived",
    "msg_too_long",
    "msg_blocks_too_long",
    "no_text",
    "invalid_blocks",
    "invalid_blocks_format",
    "invalid_metadata_format",
    "invalid_metadata_schema",
    "metadata_too_large",
    "markdown_text_conflict",
    "too_many_attachments",
    "too_many_contact_cards",
    "attachment_payload_limit_exceeded",
    "restricted_action",
    "restricted_action_read_only_channel",
    "restricted_action_thread_only_channel",
    "restricted_action_non_threadable_channel",
    "restricted_action_thread_locked",
    "ekm_access_denied",
    "as_user_not_supported",
    "messages_tab_disabled",
    "team_not_found",
    "cannot_reply_to_message",
    "missing_file_data",
    "duplicate_channel_not_found",
    "duplicate_message_not_found",
    "slack_connect_canvas_sharing_blocked",
    "slack_connect_file_link_sharing_blocked",
    "slack_connect_lists_sharing_blocked",
    "invalid_arguments",
    "invalid_arg_name",
];

/// What an `ok: false` error code means for the event being posted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The credentials (or the request shape) are wrong for every event: stop the sink.
    Fatal,
    /// Slack is unavailable or limiting: retry the request later.
    Transient,
    /// This event's message is refused: dead-letter it.
    Message,
    /// Not a code Slack documents for this method: retry the event a few times, then
    /// dead-letter it (an outage could answer anything; an unknown permanent error must not
    /// block the partition forever).
    Unknown,
}

pub fn error_class(code: &str) -> ErrorClass {
    if CREDENTIAL_ERRORS.contains(&code) || REQUEST_ERRORS.contains(&code) {
        ErrorClass::Fatal
    } else if TRANSIENT_ERRORS.contains(&code) {
        ErrorClass::Transient
    } else if MESSAGE_ERRORS.contains(&code) {
        ErrorClass::Message
    } else {
        ErrorClass::Unknown
    }
}

/// How a failed call ends for the one event it carried.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The whole call failed (retry everything later, or stop). `maybe_posted`: the message may
    /// have been posted even though the call failed: a server error or a lost answer can come
    /// after Slack stored the message, and Slack documents that after `internal_error` or
    /// `fatal_error` "some aspect of the operation" may have succeeded. Such an event is looked
    /// up before it is posted again. A 429 or a documented refusal means nothing was posted.
    Call { error: DeliveryError, maybe_posted: bool },
    /// The event's own outcome (a rejection, or a counted retry).
    Item(ItemResult),
}

impl Failure {
    fn call(error: DeliveryError, maybe_posted: bool) -> Self {
        Failure::Call { error, maybe_posted }
    }

    pub fn maybe_posted(&self) -> bool {
        match self {
            Failure::Call { maybe_posted, .. } => *maybe_posted,
            Failure::Item(ItemResult::Retry { .. }) => true,
            Failure::Item(_) => false,
        }
    }
}

/// A Web API answer: the JSON body when `ok` is true, else what the failure means. `what` names
/// the call in reasons (`chat.postMessage to C0123`).
pub fn web_api(status: StatusCode, headers: &HeaderMap, body: &str, what: &str) -> Result<serde_json::Value, Failure> {
    if let Some(e) = classify_status(status, headers, body) {
        let maybe_posted = status != StatusCode::TOO_MANY_REQUESTS && !matches!(e, DeliveryError::Fatal(_));
        return Err(Failure::call(e.prefixed(&format!("{what}: ")), maybe_posted));
    }
    let json: serde_json::Value = match serde_json::from_str(body) {
        Ok(v) => v,
        Err(_) => {
            // Not Slack's JSON (a proxy's page, a truncated body): treat as unavailable.
            return Err(Failure::call(
                DeliveryError::retry(format!(
                    "{what}: HTTP {} with a body that is not Slack's JSON: {}",
                    status.as_u16(),
                    excerpt(body)
                )),
                true,
            ));
        }
    };
    if json.get("ok").and_then(serde_json::Value::as_bool) == Some(true) {
        return Ok(json);
    }
    let code = json
        .get("error")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("unknown_error");
    let detail = json
        .pointer("/response_metadata/messages")
        .and_then(serde_json::Value::as_array)
        .map(|m| {
            m.iter()
                .filter_map(serde_json::Value::as_str)
                .collect::<Vec<_>>()
                .join("; ")
        })
        .filter(|m| !m.is_empty())
        .map(|m| format!(" ({m})"))
        .unwrap_or_default();
    let reason = format!("{what}: {code}{detail}");
    Err(match error_class(code) {
        ErrorClass::Fatal => Failure::call(
            DeliveryError::Fatal(format!(
                "Slack rejected the request for every event: {reason}{}",
                credentials_hint(code)
            )),
            false,
        ),
        ErrorClass::Transient => Failure::call(
            DeliveryError::Retry {
                reason,
                after: retry_after(headers),
            },
            !matches!(code, "ratelimited" | "rate_limited" | "message_limit_exceeded"),
        ),
        ErrorClass::Message => Failure::Item(ItemResult::reject(reason, excerpt(body))),
        ErrorClass::Unknown => Failure::Item(ItemResult::Retry {
            reason: format!("{reason} (not a documented error)"),
            after: retry_after(headers),
        }),
    })
}

/// An answer to a start-check call (`auth.test`, `conversations.info`, …): bad credentials or
/// a missing scope are [`StartError::Credentials`], an unavailable Slack is
/// [`StartError::Unreachable`] (retried), anything else about a channel is
/// [`StartError::Config`].
pub fn start_answer(status: StatusCode, body: &str, what: &str) -> Result<serde_json::Value, StartError> {
    // Slack answers its errors with HTTP 200; any other status reads by the shared rule.
    if !status.is_success() {
        return Err(nectar_sink::http::start_status(status, what, body));
    }
    let Ok(json) = serde_json::from_str::<serde_json::Value>(body) else {
        return Err(StartError::Unreachable(format!(
            "{what}: HTTP {} with a body that is not Slack's JSON: {}",
            status.as_u16(),
            excerpt(body)
        )));
    };
    if json.get("ok").and_then(serde_json::Value::as_bool) == Some(true) {
        return Ok(json);
    }
    let code = json
        .get("error")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("unknown_error");
    let scopes = match (
        json.get("needed").and_then(serde_json::Value::as_str),
        json.get("provided").and_then(serde_json::Value::as_str),
    ) {
        (Some(needed), Some(provided)) => format!(" (needed: {needed}; the token has: {provided})"),
        (Some(needed), None) => format!(" (needed: {needed})"),
        _ => String::new(),
    };
    Err(match (error_class(code), code) {
        (_, "missing_scope") => StartError::Credentials(format!(
            "{what}: missing_scope{scopes}: the token needs chat:write, channels:history (groups:history for \
             private channels) and channels:read (groups:read)"
        )),
        (ErrorClass::Fatal, _) if CREDENTIAL_ERRORS.contains(&code) => {
            StartError::Credentials(format!("{what}: {code}{scopes}: Slack does not accept target.token"))
        }
        (ErrorClass::Transient, _) => StartError::Unreachable(format!("{what}: {code}")),
        (_, "channel_not_found") => StartError::Config(format!(
            "{what}: channel_not_found (no such channel, or a private channel the app is not in)"
        )),
        (_, "not_in_channel") => StartError::Config(format!(
            "{what}: not_in_channel: invite the app to the channel (`/invite @<app>`)"
        )),
        _ => StartError::Config(format!("{what}: {code}")),
    })
}

fn credentials_hint(code: &str) -> &'static str {
    if CREDENTIAL_ERRORS.contains(&code) {
        " (credentials rejected: check target.token and its scopes)"
    } else {
        ""
    }
}

/// An incoming webhook's answer: `200 ok`, or an error string with a status. The webhook is
/// bound to one channel, so an answer about the channel or the webhook itself (403, 404, 410)
/// holds for every event: it stops the sink. A 400 is about this message: it is rejected.
pub fn webhook(status: StatusCode, headers: &HeaderMap, body: &str) -> Result<(), Failure> {
    let text = body.trim();
    if status.is_success() {
        return Ok(());
    }
    if let Some(e) = classify_status(status, headers, body) {
        return Err(match e {
            DeliveryError::Fatal(_) => Failure::call(
                DeliveryError::Fatal(format!(
                    "the incoming webhook refuses every message (HTTP {}: {}): check \
                     target.webhook_url and the app's installation",
                    status.as_u16(),
                    excerpt(text)
                )),
                false,
            ),
            other => Failure::call(
                other.prefixed("incoming webhook: "),
                status != StatusCode::TOO_MANY_REQUESTS,
            ),
        });
    }
    let reason = format!("incoming webhook: HTTP {}: {}", status.as_u16(), excerpt(text));
    Err(match status {
        StatusCode::BAD_REQUEST => Failure::Item(ItemResult::reject(reason, excerpt(text))),
        StatusCode::NOT_FOUND | StatusCode::GONE => Failure::call(
            DeliveryError::Fatal(format!(
                "{reason}: the webhook or its channel no longer exists (check target.webhook_url)"
            )),
            false,
        ),
        _ => Failure::Item(ItemResult::Retry {
            reason: format!("{reason} (not a documented answer)"),
            after: retry_after(headers),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderValue, RETRY_AFTER};
    use std::time::Duration;

    fn post(status: u16, body: &str) -> Result<serde_json::Value, Failure> {
        web_api(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body,
            "chat.postMessage to C1",
        )
    }

    #[test]
    fn ok_true_is_success() {
        let v = post(200, r#"{"ok": true, "channel": "C1", "ts": "1.000001"}"#).unwrap();
        assert_eq!(v["ts"], "1.000001");
    }

    #[test]
    fn a_429_retries_after_retry_after() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        let e = web_api(
            StatusCode::TOO_MANY_REQUESTS,
            &h,
            r#"{"ok": false, "error": "ratelimited"}"#,
            "chat.postMessage to C1",
        )
        .unwrap_err();
        match &e {
            Failure::Call {
                error: DeliveryError::Retry { after, reason },
                ..
            } => {
                assert_eq!(*after, Some(Duration::from_secs(7)));
                assert!(reason.contains("rate limited"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert!(!e.maybe_posted(), "a 429 means Slack did not take it");
    }

    #[test]
    fn server_errors_retry_and_may_have_posted() {
        let e = post(503, "<html>down</html>").unwrap_err();
        assert!(
            matches!(
                e,
                Failure::Call {
                    error: DeliveryError::Retry { .. },
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.maybe_posted());
        let e = post(200, "<html>proxy</html>").unwrap_err();
        assert!(
            matches!(
                e,
                Failure::Call {
                    error: DeliveryError::Retry { .. },
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[test]
    fn auth_errors_are_fatal() {
        for code in [
            "invalid_auth",
            "not_authed",
            "account_inactive",
            "token_revoked",
            "token_expired",
            "no_permission",
            "missing_scope",
        ] {
            let e = post(200, &format!(r#"{{"ok": false, "error": "{code}"}}"#)).unwrap_err();
            match e {
                Failure::Call {
                    error: DeliveryError::Fatal(m),
                    ..
                } => {
                    assert!(m.contains(code) && m.contains("credentials rejected"), "{m}")
                }
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn message_errors_reject_with_slacks_answer() {
        for code in [
            "channel_not_found",
            "not_in_channel",
            "is_archived",
            "msg_too_long",
            "no_text",
            "invalid_blocks",
            "invalid_metadata_format",
        ] {
            let body =
                format!(r#"{{"ok": false, "error": "{code}", "response_metadata": {{"messages": ["[ERROR] bad"]}}}}"#);
            match post(200, &body).unwrap_err() {
                Failure::Item(ItemResult::Reject { reason, response }) => {
                    assert!(reason.contains(code) && reason.contains("[ERROR] bad"), "{reason}");
                    assert_eq!(response, body);
                }
                other => panic!("{code}: {other:?}"),
            }
        }
    }

    #[test]
    fn transient_errors_retry_the_call() {
        for code in [
            "internal_error",
            "fatal_error",
            "service_unavailable",
            "request_timeout",
            "ratelimited",
        ] {
            let e = post(200, &format!(r#"{{"ok": false, "error": "{code}"}}"#)).unwrap_err();
            assert!(
                matches!(
                    e,
                    Failure::Call {
                        error: DeliveryError::Retry { .. },
                        ..
                    }
                ),
                "{code}: {e:?}"
            );
            assert_eq!(e.maybe_posted(), code != "ratelimited", "{code}");
        }
    }

    #[test]
    fn unknown_errors_are_counted_retries() {
        let e = post(200, r#"{"ok": false, "error": "something_new"}"#).unwrap_err();
        assert!(matches!(e, Failure::Item(ItemResult::Retry { .. })), "{e:?}");
    }

    #[test]
    fn start_answers_say_what_is_wrong() {
        let answer = |body: &str| start_answer(StatusCode::OK, body, "auth.test");
        assert!(answer(r#"{"ok": true, "user_id": "U1"}"#).is_ok());
        match answer(r#"{"ok": false, "error": "invalid_auth"}"#) {
            Err(e @ StartError::Credentials(_)) => {
                let m = e.to_string();
                assert!(
                    m.starts_with("credentials rejected") && m.contains("invalid_auth"),
                    "{m}"
                );
            }
            other => panic!("{other:?}"),
        }
        match answer(
            r#"{"ok": false, "error": "missing_scope", "needed": "channels:history", "provided": "chat:write"}"#,
        ) {
            Err(StartError::Credentials(m)) => assert!(m.contains("needed: channels:history"), "{m}"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            answer(r#"{"ok": false, "error": "channel_not_found"}"#),
            Err(StartError::Config(_))
        ));
        assert!(matches!(
            answer(r#"{"ok": false, "error": "service_unavailable"}"#),
            Err(StartError::Unreachable(_))
        ));
        assert!(matches!(
            start_answer(StatusCode::BAD_GATEWAY, "", "auth.test"),
            Err(StartError::Unreachable(_))
        ));
    }

    #[test]
    fn webhook_answers() {
        let h = HeaderMap::new();
        assert_eq!(webhook(StatusCode::OK, &h, "ok"), Ok(()));
        assert!(matches!(
            webhook(StatusCode::BAD_REQUEST, &h, "invalid_payload"),
            Err(Failure::Item(ItemResult::Reject { .. }))
        ));
        for (status, body) in [
            (StatusCode::FORBIDDEN, "action_prohibited"),
            (StatusCode::FORBIDDEN, "invalid_token"),
            (StatusCode::NOT_FOUND, "no_service"),
            (StatusCode::NOT_FOUND, "channel_not_found"),
            (StatusCode::GONE, "channel_is_archived"),
        ] {
            match webhook(status, &h, body) {
                Err(Failure::Call {
                    error: DeliveryError::Fatal(m),
                    ..
                }) => assert!(m.contains(body), "{m}"),
                other => panic!("{status} {body}: {other:?}"),
            }
        }
        assert!(matches!(
            webhook(StatusCode::INTERNAL_SERVER_ERROR, &h, "rollup_error"),
            Err(Failure::Call {
                error: DeliveryError::Retry { .. },
                ..
            })
        ));
        assert!(matches!(
            webhook(StatusCode::TOO_MANY_REQUESTS, &h, "rate_limited"),
            Err(Failure::Call {
                error: DeliveryError::Retry { .. },
                ..
            })
        ));
    }
}
