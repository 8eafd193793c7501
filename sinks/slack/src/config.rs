//! `[target]`: how the Slack sink posts (bot token or incoming webhook), where each event goes
//! (routes by event type) and what the message looks like (templates).

use nectar_core::config::{Sensitive, Validate};
use reqwest::Url;
use serde::Deserialize;

use crate::template::Templates;

/// The `[target]` section of the Slack sink.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlackConfig {
    /// `bot`: `chat.postMessage` with a bot token; each message carries the event id as message
    /// metadata and a possibly-sent event is looked up before it is posted again (exactly once).
    /// `webhook`: an incoming webhook; it cannot be looked up (at least once).
    pub mode: Mode,
    /// Bot token (`xoxb-…`), bot mode. Scopes: `chat:write`, `channels:history` (and
    /// `groups:history` for private channels) for the duplicate lookup, `channels:read` (and
    /// `groups:read`) for the start check.
    #[serde(default)]
    pub token: Option<Sensitive<String>>,
    /// Web API base URL (bot mode); a test points it at a fake.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The incoming webhook URL, webhook mode (`https://hooks.slack.com/services/T…/B…/…`). It is
    /// a secret: anyone holding it can post to the channel.
    #[serde(default)]
    pub webhook_url: Option<Sensitive<String>>,
    /// Channel ID for events no route matches (bot mode). Without it such an event is
    /// dead-lettered with a reason that names its type.
    #[serde(default)]
    pub default_channel: Option<String>,
    /// Per event type: the channel (bot mode) and, optionally, a template of its own. The first
    /// route whose `event_types` match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    /// The template of events whose route has none. Default: a lead alert (name, email, company,
    /// score, source).
    #[serde(default)]
    pub template: Option<TemplateConfig>,
    /// How far back (seconds) the duplicate lookup reads a channel's history for a message that
    /// a crashed previous owner may have posted. Must cover the time from a post to its commit
    /// plus a restart.
    #[serde(default = "default_lookup_window_secs")]
    pub lookup_window_secs: u64,
    /// Let Slack unfurl links and media in messages (`unfurl_links`, `unfurl_media`); off: a
    /// lead alert should not preview the lead's pages.
    #[serde(default)]
    pub unfurl: bool,
    /// At start, check each configured channel exists, is not archived and has the bot as a
    /// member (`conversations.info`, needs `channels:read`/`groups:read`).
    #[serde(default = "default_true")]
    pub check_channels: bool,
}

/// How messages are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    Bot,
    Webhook,
}

/// `[[target.routes]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Event types this route takes: exact names (`lead.captured`), a prefix ending in `.*`
    /// (`deal.*`) or `*` for every type.
    pub event_types: Vec<String>,
    /// Channel ID (bot mode; not a name: the lookup needs IDs). Webhook mode posts to the
    /// webhook's own channel and takes none.
    #[serde(default)]
    pub channel: Option<String>,
    /// Template of the message text (the notification and screen-reader fallback); with
    /// `blocks`, the Block Kit layout. Neither: the default template.
    #[serde(default)]
    pub text: Option<String>,
    #[serde(default)]
    pub blocks: Option<String>,
}

/// `[target.template]`: the default template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    /// minijinja template of the message text; values are escaped for Slack mrkdwn.
    pub text: String,
    /// minijinja template rendering a JSON array of Block Kit blocks; values are escaped for a
    /// JSON string and Slack mrkdwn (`|tojson` inserts a value as JSON, `|safe` as is).
    #[serde(default)]
    pub blocks: Option<String>,
}

fn default_api_url() -> String {
    "https://slack.com/api".into()
}
fn default_lookup_window_secs() -> u64 {
    3600
}
fn default_true() -> bool {
    true
}

impl SlackConfig {
    /// Every channel a message can go to (bot mode), with the key that configures it.
    pub fn channels(&self) -> Vec<(String, String)> {
        let mut channels: Vec<(String, String)> = Vec::new();
        for (i, route) in self.routes.iter().enumerate() {
            if let Some(c) = &route.channel {
                channels.push((format!("target.routes[{i}].channel"), c.clone()));
            }
        }
        if let Some(c) = &self.default_channel {
            channels.push(("target.default_channel".into(), c.clone()));
        }
        let mut seen = std::collections::HashSet::new();
        channels.retain(|(_, c)| seen.insert(c.clone()));
        channels
    }
}

/// A Slack conversation ID: `C…` (public), `G…` (private, legacy), `D…` (direct message).
pub fn is_channel_id(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some('C' | 'G' | 'D'))
        && s.len() >= 3
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
}

/// An event type pattern: a name, `prefix.*`, or `*`.
pub fn pattern_matches(pattern: &str, event_type: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => {
            event_type.len() > prefix.len() + 1 && event_type.starts_with(prefix) && {
                event_type.as_bytes()[prefix.len()] == b'.'
            }
        }
        None => pattern == event_type,
    }
}

/// Checks an incoming webhook URL's shape. Slack's own URLs must be
/// `https://hooks.slack.com/services/T…/B…/<secret>`; another host (a proxy, a test fake) only
/// needs to be an http(s) URL. A webhook cannot be tested without posting to the channel, so
/// this is all the start check can say about it.
pub fn check_webhook_url(url: &str) -> Result<Url, String> {
    let parsed = Url::parse(url).map_err(|e| format!("not a URL ({e})"))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err("must be an http(s) URL".into());
    }
    let host = parsed.host_str().unwrap_or_default();
    if host == "hooks.slack.com" || host == "hooks.slack-gov.com" {
        if parsed.scheme() != "https" {
            return Err("Slack's webhook URLs are https".into());
        }
        let segments: Vec<&str> = parsed.path_segments().map(|s| s.collect()).unwrap_or_default();
        let shaped = segments.len() == 4
            && segments[0] == "services"
            && segments[1].starts_with('T')
            && segments[2].starts_with('B')
            && segments[1..].iter().all(|s| !s.is_empty());
        if !shaped {
            return Err("expected https://hooks.slack.com/services/T…/B…/<secret>".into());
        }
    }
    Ok(parsed)
}

impl Validate for SlackConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        match self.mode {
            Mode::Bot => {
                match &self.token {
                    None => errors.push("target.token: required in bot mode (a bot token, xoxb-…)".into()),
                    Some(t) if t.expose().trim().is_empty() => {
                        errors.push("target.token: must not be empty".into());
                    }
                    Some(_) => {}
                }
                if self.webhook_url.is_some() {
                    errors.push("target.webhook_url: only used in webhook mode (target.mode = \"webhook\")".into());
                }
                match Url::parse(&self.api_url) {
                    Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                    _ => errors.push(format!("target.api_url: `{}` is not an http(s) URL", self.api_url)),
                }
                if let Some(c) = &self.default_channel
                    && !is_channel_id(c)
                {
                    errors.push(format!(
                        "target.default_channel: `{c}` is not a channel ID (like C0123ABCD); names \
                         cannot be looked up in the channel's history"
                    ));
                }
                if self.lookup_window_secs == 0 {
                    errors.push("target.lookup_window_secs: must be at least 1".into());
                }
            }
            Mode::Webhook => {
                match &self.webhook_url {
                    None => errors.push("target.webhook_url: required in webhook mode".into()),
                    Some(url) => {
                        if let Err(e) = check_webhook_url(url.expose()) {
                            errors.push(format!("target.webhook_url: {e}"));
                        }
                    }
                }
                if self.token.is_some() {
                    errors.push("target.token: only used in bot mode (target.mode = \"bot\")".into());
                }
                if self.default_channel.is_some() {
                    errors.push("target.default_channel: webhook mode posts to the webhook's own channel".into());
                }
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            let key = format!("target.routes[{i}]");
            if route.event_types.is_empty() {
                errors.push(format!("{key}.event_types: list at least one event type"));
            }
            for pattern in &route.event_types {
                let name = pattern.strip_suffix(".*").unwrap_or(pattern);
                let valid = pattern == "*"
                    || (!name.is_empty()
                        && name
                            .chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')));
                if !valid {
                    errors.push(format!(
                        "{key}.event_types: `{pattern}` is not an event type, `prefix.*` or `*`"
                    ));
                }
            }
            match (self.mode, &route.channel) {
                (Mode::Bot, None) => errors.push(format!("{key}.channel: required in bot mode (a channel ID)")),
                (Mode::Bot, Some(c)) if !is_channel_id(c) => errors.push(format!(
                    "{key}.channel: `{c}` is not a channel ID (like C0123ABCD); names cannot be looked \
                     up in the channel's history"
                )),
                (Mode::Webhook, Some(_)) => errors.push(format!(
                    "{key}.channel: webhook mode posts to the webhook's own channel; leave it out"
                )),
                _ => {}
            }
            if route.blocks.is_some() && route.text.is_none() {
                errors.push(format!(
                    "{key}.text: required with blocks (the notification and screen-reader fallback)"
                ));
            }
        }
        if let Err(e) = Templates::new(self) {
            errors.push(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bot() -> SlackConfig {
        SlackConfig {
            mode: Mode::Bot,
            token: Some(Sensitive::new("xoxb-1".into())),
            api_url: default_api_url(),
            webhook_url: None,
            default_channel: Some("C0DEFAULT".into()),
            routes: vec![RouteConfig {
                event_types: vec!["lead.captured".into(), "deal.*".into()],
                channel: Some("C0LEADS".into()),
                text: None,
                blocks: None,
            }],
            template: None,
            lookup_window_secs: 3600,
            unfurl: false,
            check_channels: true,
        }
    }

    fn errors(c: &SlackConfig) -> Vec<String> {
        let mut e = Vec::new();
        c.validate(&mut e);
        e
    }

    #[test]
    fn a_bot_config_is_valid() {
        assert_eq!(errors(&bot()), Vec::<String>::new());
        assert_eq!(
            bot().channels(),
            vec![
                ("target.routes[0].channel".to_owned(), "C0LEADS".to_owned()),
                ("target.default_channel".to_owned(), "C0DEFAULT".to_owned())
            ]
        );
    }

    #[test]
    fn every_error_names_its_key() {
        let mut c = bot();
        c.token = None;
        c.default_channel = Some("#leads".into());
        c.routes.push(RouteConfig {
            event_types: vec!["bad type!".into()],
            channel: None,
            text: None,
            blocks: Some("[]".into()),
        });
        c.template = Some(TemplateConfig {
            text: "{{ unclosed".into(),
            blocks: None,
        });
        let e = errors(&c);
        for key in [
            "target.token:",
            "target.default_channel:",
            "target.routes[1].event_types:",
            "target.routes[1].channel:",
            "target.routes[1].text:",
            "target.template.text:",
        ] {
            assert!(e.iter().any(|m| m.starts_with(key)), "{key} in {e:#?}");
        }
    }

    #[test]
    fn webhook_mode_needs_a_webhook_url_and_no_channels() {
        let mut c = bot();
        c.mode = Mode::Webhook;
        let e = errors(&c);
        assert!(
            e.iter().any(|m| m.starts_with("target.webhook_url: required")),
            "{e:#?}"
        );
        assert!(e.iter().any(|m| m.starts_with("target.token:")), "{e:#?}");
        assert!(e.iter().any(|m| m.starts_with("target.routes[0].channel:")), "{e:#?}");
        c.token = None;
        c.default_channel = None;
        c.routes.clear();
        c.webhook_url = Some(Sensitive::new("https://hooks.slack.com/services/T1/B2/secret".into()));
        assert_eq!(errors(&c), Vec::<String>::new());
    }

    #[test]
    fn webhook_urls_are_checked_for_shape() {
        assert!(check_webhook_url("https://hooks.slack.com/services/T0001/B0002/abcdef").is_ok());
        assert!(check_webhook_url("http://127.0.0.1:4000/services/T0001/B0002/abcdef").is_ok());
        assert!(check_webhook_url("http://hooks.slack.com/services/T0001/B0002/abcdef").is_err());
        assert!(check_webhook_url("https://hooks.slack.com/services/T0001/B0002").is_err());
        assert!(check_webhook_url("https://hooks.slack.com/workflows/x").is_err());
        assert!(check_webhook_url("ftp://example.com/x").is_err());
        assert!(check_webhook_url("not a url").is_err());
    }

    #[test]
    fn patterns_match_names_prefixes_and_everything() {
        assert!(pattern_matches("lead.captured", "lead.captured"));
        assert!(!pattern_matches("lead.captured", "lead.captured2"));
        assert!(pattern_matches("deal.*", "deal.won"));
        assert!(!pattern_matches("deal.*", "deal"));
        assert!(!pattern_matches("deal.*", "dealer.won"));
        assert!(pattern_matches("*", "anything"));
    }

    #[test]
    fn channel_ids_are_told_from_names() {
        assert!(is_channel_id("C0123ABCD"));
        assert!(is_channel_id("G12345"));
        assert!(!is_channel_id("#general"));
        assert!(!is_channel_id("general"));
        assert!(!is_channel_id("C"));
    }
}
