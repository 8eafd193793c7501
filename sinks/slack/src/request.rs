//! Turning an event into a Slack request: which route it takes (channel and template), and the
//! JSON body of `chat.postMessage` or of the incoming webhook.
//!
//! - chat.postMessage: <https://docs.slack.dev/reference/methods/chat.postMessage> (JSON body,
//!   `Authorization: Bearer`, `Content-type: application/json; charset=utf-8` per
//!   <https://docs.slack.dev/apis/web-api#posting_json>)
//! - message metadata: <https://docs.slack.dev/messaging/message-metadata>
//! - incoming webhooks: <https://docs.slack.dev/messaging/sending-messages-using-incoming-webhooks>

use serde_json::{Value, json};

use crate::config::{Mode, SlackConfig, pattern_matches};
use crate::lookup::METADATA_EVENT_TYPE;
use crate::template::Rendered;

/// The content type of every JSON request: without the charset Slack answers with a
/// `missing_charset` warning.
pub const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

/// Where one event goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route<'a> {
    /// Index in `target.routes`, or `None` (no route matched: default channel and template).
    pub index: Option<usize>,
    /// The channel ID (bot mode); `None` in webhook mode.
    pub channel: Option<&'a str>,
}

/// The first route taking `event_type`; else the default channel (bot mode) or the webhook.
/// `Err`: bot mode, no route and no default channel.
pub fn route<'a>(config: &'a SlackConfig, event_type: &str) -> Result<Route<'a>, String> {
    let matched = config
        .routes
        .iter()
        .position(|r| r.event_types.iter().any(|p| pattern_matches(p, event_type)));
    match (config.mode, matched) {
        (Mode::Webhook, index) => Ok(Route { index, channel: None }),
        (Mode::Bot, Some(i)) => Ok(Route {
            index: Some(i),
            channel: config.routes[i].channel.as_deref(),
        }),
        (Mode::Bot, None) => match &config.default_channel {
            Some(c) => Ok(Route {
                index: None,
                channel: Some(c),
            }),
            None => Err(format!(
                "no Slack channel for event type `{event_type}`: no target.routes entry takes it and \
                 target.default_channel is not set"
            )),
        },
    }
}

/// The message metadata that makes a posted event findable in the channel's history.
pub fn metadata(event_id: &str) -> Value {
    json!({
        "event_type": METADATA_EVENT_TYPE,
        "event_payload": { "event_id": event_id },
    })
}

/// `chat.postMessage`'s body.
pub fn post_message(channel: &str, message: &Rendered, event_id: &str, unfurl: bool) -> Value {
    let mut body = json!({
        "channel": channel,
        "text": message.text,
        "metadata": metadata(event_id),
        "unfurl_links": unfurl,
        "unfurl_media": unfurl,
    });
    if let Some(blocks) = &message.blocks {
        body["blocks"] = Value::Array(blocks.clone());
    }
    body
}

/// An incoming webhook's body. No metadata: a webhook message cannot be looked up.
pub fn webhook(message: &Rendered, unfurl: bool) -> Value {
    let mut body = json!({
        "text": message.text,
        "unfurl_links": unfurl,
        "unfurl_media": unfurl,
    });
    if let Some(blocks) = &message.blocks {
        body["blocks"] = Value::Array(blocks.clone());
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RouteConfig;
    use nectar_core::config::Sensitive;

    fn config(mode: Mode) -> SlackConfig {
        SlackConfig {
            mode,
            token: None,
            api_url: "https://slack.com/api".into(),
            webhook_url: Some(Sensitive::new("https://hooks.slack.com/services/T1/B1/x".into())),
            default_channel: None,
            routes: vec![
                RouteConfig {
                    event_types: vec!["lead.captured".into()],
                    channel: Some("C0LEADS".into()),
                    text: None,
                    blocks: None,
                },
                RouteConfig {
                    event_types: vec!["deal.*".into()],
                    channel: Some("C0DEALS".into()),
                    text: None,
                    blocks: None,
                },
            ],
            template: None,
            lookup_window_secs: 3600,
            unfurl: false,
            check_channels: true,
        }
    }

    #[test]
    fn the_first_matching_route_wins_then_the_default_channel() {
        let mut c = config(Mode::Bot);
        assert_eq!(
            route(&c, "deal.won"),
            Ok(Route {
                index: Some(1),
                channel: Some("C0DEALS")
            })
        );
        let err = route(&c, "page.viewed").unwrap_err();
        assert!(
            err.contains("`page.viewed`") && err.contains("target.default_channel"),
            "{err}"
        );
        c.default_channel = Some("C0ALL".into());
        assert_eq!(
            route(&c, "page.viewed"),
            Ok(Route {
                index: None,
                channel: Some("C0ALL")
            })
        );
    }

    #[test]
    fn webhook_mode_routes_pick_templates_only() {
        let c = config(Mode::Webhook);
        assert_eq!(
            route(&c, "lead.captured"),
            Ok(Route {
                index: Some(0),
                channel: None
            })
        );
        assert_eq!(
            route(&c, "page.viewed"),
            Ok(Route {
                index: None,
                channel: None
            })
        );
    }

    #[test]
    fn a_post_carries_text_blocks_and_the_event_id_as_metadata() {
        let message = Rendered {
            text: "New lead".into(),
            blocks: Some(vec![json!({"type": "divider"})]),
        };
        let body = post_message("C0LEADS", &message, "evt-1", false);
        assert_eq!(
            body,
            json!({
                "channel": "C0LEADS",
                "text": "New lead",
                "blocks": [{"type": "divider"}],
                "metadata": {"event_type": "nectar_event", "event_payload": {"event_id": "evt-1"}},
                "unfurl_links": false,
                "unfurl_media": false,
            })
        );
        let text_only = Rendered {
            text: "hi".into(),
            blocks: None,
        };
        assert!(post_message("C1", &text_only, "e", true).get("blocks").is_none());
        assert_eq!(
            webhook(&message, true),
            json!({"text": "New lead", "blocks": [{"type": "divider"}], "unfurl_links": true, "unfurl_media": true})
        );
    }
}
