//! Message templates: minijinja, rendered per event into the message `text` (the notification
//! and screen-reader fallback) and, optionally, a JSON array of Block Kit blocks.
//!
//! Templates are the shared template language (`nectar_sink::template`): they see `event` (the
//! whole `io.nectar.Event` as JSON) and `lead` (a summary: `name`, `email`, `company`, `score`,
//! `stage`, `source`, `event_type`, `event_id`, ...), with the shared filters (`clip`, ...). Every value a
//! template prints is escaped: `&`, `<` and `>` become entities in both templates, as Slack's
//! formatting rules ask (so a form field reading `<!channel>` cannot ping a channel), and in the
//! blocks template the value is also escaped for a JSON string, so it can be printed inside
//! one (`"text": "*Name* {{ lead.name }}"`) and never breaks the document. `|tojson` prints a
//! value as JSON, `|safe` prints it as is.

use std::fmt::Write as _;

use minijinja::value::Value as JinjaValue;
use minijinja::{AutoEscape, Environment, Output, State};
use nectar_core::events::Event;
use serde_json::Value;

use crate::config::SlackConfig;

/// The default text: a one-line lead alert.
pub const DEFAULT_TEXT: &str = "New lead: {{ lead.name or lead.email or \"unknown\" }}\
{% if lead.name and lead.email %} ({{ lead.email }}){% endif %}\
{% if lead.company %} at {{ lead.company }}{% endif %}\
{% if lead.score is not none %} · score {{ lead.score }}{% endif %} · source {{ lead.source }}";

/// The default blocks: a header with the lead's name, a fields section, and a context line with
/// the event type and id (to find the event in Kafka from the message).
pub const DEFAULT_BLOCKS: &str = r#"[
  {"type": "header", "text": {"type": "plain_text", "emoji": true,
    "text": "New lead: {{ (lead.name or lead.email or "unknown")|clip(120) }}"}},
  {"type": "section", "fields": [
    {"type": "mrkdwn", "text": "*Name*\n{{ (lead.name or "—")|clip(200) }}"},
    {"type": "mrkdwn", "text": "*Email*\n{{ (lead.email or "—")|clip(200) }}"},
    {"type": "mrkdwn", "text": "*Company*\n{{ (lead.company or "—")|clip(200) }}"},
    {"type": "mrkdwn", "text": "*Score*\n{% if lead.score is not none %}{{ lead.score }}{% if lead.stage %} ({{ lead.stage|clip(100) }}){% endif %}{% else %}—{% endif %}"},
    {"type": "mrkdwn", "text": "*Source*\n{{ lead.source|clip(200) }}"}
  ]},
  {"type": "context", "elements": [
    {"type": "mrkdwn", "text": "{{ lead.event_type }} · event {{ lead.event_id }}"}
  ]}
]"#;

const TEXT_ESCAPE: AutoEscape = AutoEscape::Custom("slack");
const BLOCKS_ESCAPE: AutoEscape = AutoEscape::Custom("slack-json");

/// Which templates render a message: names in the environment.
#[derive(Debug, Clone)]
pub struct TemplateRef {
    text: String,
    blocks: Option<String>,
}

/// A rendered message.
#[derive(Debug, Clone, PartialEq)]
pub struct Rendered {
    pub text: String,
    pub blocks: Option<Vec<Value>>,
}

/// The compiled templates: the default one and one per route that has its own.
#[derive(Debug)]
pub struct Templates {
    env: Environment<'static>,
    default: TemplateRef,
    /// Per route (same index as `target.routes`): its template, or `None` for the default.
    routes: Vec<Option<TemplateRef>>,
}

/// `&`, `<`, `>` as Slack's formatting rules ask for text sent to it.
pub fn slack_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// The inside of a JSON string literal holding `s`.
fn json_string_body(s: &str) -> String {
    let quoted = serde_json::to_string(s).unwrap_or_default();
    quoted[1..quoted.len() - 1].to_owned()
}

fn format_value(out: &mut Output, state: &State, value: &JinjaValue) -> Result<(), minijinja::Error> {
    if value.is_undefined() || value.is_none() {
        return Ok(());
    }
    let escape = state.auto_escape();
    if value.is_safe() || !matches!(escape, AutoEscape::Custom(_)) {
        return minijinja::escape_formatter(out, state, value);
    }
    let plain = match value.as_str() {
        Some(s) => s.to_owned(),
        None => value.to_string(),
    };
    let escaped = slack_escape(&plain);
    let written = if escape == BLOCKS_ESCAPE {
        out.write_str(&json_string_body(&escaped))
    } else {
        out.write_str(&escaped)
    };
    written.map_err(|e| minijinja::Error::new(minijinja::ErrorKind::WriteFailure, e.to_string()))
}

impl Templates {
    /// Compile the default template and every route's; the error names the key.
    pub fn new(config: &SlackConfig) -> Result<Self, String> {
        // The shared template language (context, filters), with Slack's escaping on top.
        let mut env = nectar_sink::template::environment();
        env.set_auto_escape_callback(|name| {
            if name.ends_with(".blocks") {
                BLOCKS_ESCAPE
            } else {
                TEXT_ESCAPE
            }
        });
        env.set_formatter(format_value);
        env.add_filter("mrkdwn_escape", |s: String| slack_escape(&s));

        let mut add = |name: String, source: &str, key: &str| -> Result<String, String> {
            env.add_template_owned(name.clone(), source.to_owned())
                .map_err(|e| format!("{key}: invalid template: {e}"))?;
            Ok(name)
        };
        let default = match &config.template {
            Some(t) => TemplateRef {
                text: add("default.text".into(), &t.text, "target.template.text")?,
                blocks: match &t.blocks {
                    Some(b) => Some(add("default.blocks".into(), b, "target.template.blocks")?),
                    None => None,
                },
            },
            None => TemplateRef {
                text: add("default.text".into(), DEFAULT_TEXT, "the default text template")?,
                blocks: Some(add(
                    "default.blocks".into(),
                    DEFAULT_BLOCKS,
                    "the default blocks template",
                )?),
            },
        };
        let mut routes = Vec::new();
        for (i, route) in config.routes.iter().enumerate() {
            let Some(text) = &route.text else {
                routes.push(None);
                continue;
            };
            let key = format!("target.routes[{i}]");
            let text = add(format!("route{i}.text"), text, &format!("{key}.text"))?;
            let blocks = match &route.blocks {
                Some(b) => Some(add(format!("route{i}.blocks"), b, &format!("{key}.blocks"))?),
                None => None,
            };
            routes.push(Some(TemplateRef { text, blocks }));
        }
        Ok(Self { env, default, routes })
    }

    /// The template of route `route` (its own or the default).
    pub fn for_route(&self, route: Option<usize>) -> &TemplateRef {
        route
            .and_then(|i| self.routes.get(i))
            .and_then(Option::as_ref)
            .unwrap_or(&self.default)
    }

    /// Render `event`. The error says which template failed and why: the event cannot be
    /// rendered, so it is rejected (dead-lettered) with it.
    pub fn render(&self, template: &TemplateRef, event: &Event) -> Result<Rendered, String> {
        let ctx = nectar_sink::template::context(event);
        let render = |name: &str| -> Result<String, String> {
            self.env
                .get_template(name)
                .and_then(|t| t.render(&ctx))
                .map_err(|e| format!("template {name} failed: {e}"))
        };
        let text = render(&template.text)?.trim().to_owned();
        let blocks = match &template.blocks {
            None => None,
            Some(name) => {
                let source = render(name)?;
                if source.trim().is_empty() {
                    None
                } else {
                    match serde_json::from_str::<Value>(&source) {
                        Ok(Value::Array(blocks)) => Some(blocks),
                        Ok(_) => return Err(format!("template {name} did not render a JSON array of blocks")),
                        Err(e) => {
                            let mut msg = format!("template {name} rendered invalid JSON: {e}");
                            let _ = write!(msg, " in `{}`", nectar_sink::http::excerpt(source.trim()));
                            return Err(msg);
                        }
                    }
                }
            }
        };
        Ok(Rendered { text, blocks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Mode, RouteConfig, TemplateConfig};
    use nectar_core::events::{Envelope, LeadScore, Person};

    fn config() -> SlackConfig {
        SlackConfig {
            mode: Mode::Bot,
            token: Some(nectar_core::config::Sensitive::new("xoxb-1".into())),
            api_url: "https://slack.com/api".into(),
            webhook_url: None,
            default_channel: Some("C0DEFAULT".into()),
            routes: vec![],
            template: None,
            lookup_window_secs: 3600,
            unfurl: false,
            check_channels: true,
        }
    }

    pub(crate) fn lead_event() -> Event {
        let mut event = Event::new(Envelope {
            event_id: "0190-abc".into(),
            event_type: "lead.captured".into(),
            occurred_at: 1_700_000_000_000,
            received_at: 1_700_000_000_100,
            source: "form:contact".into(),
            workspace_id: "acme".into(),
            lead_key: Some("k".into()),
            trace_parent: None,
            consent: None,
        });
        event.person = Some(Person {
            email: Some("ada@example.com".into()),
            first_name: Some("Ada".into()),
            last_name: Some("Lovelace".into()),
            company: Some("Analytical & Co <Engines>".into()),
            ..Person::default()
        });
        event.score = Some(LeadScore {
            value: 87.6,
            delta: 10.0,
            stage: "mql".into(),
            crossed: None,
        });
        event
    }

    #[test]
    fn the_default_template_renders_a_lead_alert() {
        let t = Templates::new(&config()).unwrap();
        let r = t.render(t.for_route(None), &lead_event()).unwrap();
        assert_eq!(
            r.text,
            "New lead: Ada Lovelace (ada@example.com) at Analytical &amp; Co &lt;Engines&gt; · score 88 · source form:contact"
        );
        let blocks = r.blocks.unwrap();
        assert_eq!(blocks.len(), 3);
        assert_eq!(blocks[0]["text"]["text"], "New lead: Ada Lovelace");
        let fields = blocks[1]["fields"].as_array().unwrap();
        assert_eq!(fields[0]["text"], "*Name*\nAda Lovelace");
        assert_eq!(fields[2]["text"], "*Company*\nAnalytical &amp; Co &lt;Engines&gt;");
        assert_eq!(fields[3]["text"], "*Score*\n88 (mql)");
        assert_eq!(blocks[2]["elements"][0]["text"], "lead.captured · event 0190-abc");
    }

    #[test]
    fn missing_fields_render_as_dashes_not_errors() {
        let t = Templates::new(&config()).unwrap();
        let mut e = lead_event();
        e.person = None;
        e.score = None;
        let r = t.render(t.for_route(None), &e).unwrap();
        assert_eq!(r.text, "New lead: unknown · source form:contact");
        let blocks = r.blocks.unwrap();
        assert_eq!(blocks[1]["fields"][1]["text"], "*Email*\n—");
        assert_eq!(blocks[1]["fields"][3]["text"], "*Score*\n—");
    }

    #[test]
    fn values_cannot_break_the_json_or_mention_a_channel() {
        let t = Templates::new(&config()).unwrap();
        let mut e = lead_event();
        e.person.as_mut().unwrap().full_name = Some("\"}]} <!channel> \\ \n".into());
        let r = t.render(t.for_route(None), &e).unwrap();
        let blocks = r.blocks.unwrap();
        assert_eq!(blocks[1]["fields"][0]["text"], "*Name*\n\"}]} &lt;!channel&gt; \\ \n");
        assert!(!r.text.contains("<!channel>"));
    }

    #[test]
    fn routes_have_their_own_templates_with_the_whole_event() {
        let mut c = config();
        c.routes.push(RouteConfig {
            event_types: vec!["deal.*".into()],
            channel: Some("C0DEALS".into()),
            text: Some("Deal in {{ event.envelope.workspace_id }} for {{ event.person.email }}".into()),
            blocks: Some(
                r#"[{"type": "section", "text": {"type": "mrkdwn", "text": "{{ event.person.company }}"}}, {"type": "context", "elements": [{"type": "mrkdwn", "text": {{ lead.event_id|tojson }} }]}]"#.into(),
            ),
        });
        c.routes.push(RouteConfig {
            event_types: vec!["*".into()],
            channel: Some("C0ALL".into()),
            text: None,
            blocks: None,
        });
        let t = Templates::new(&c).unwrap();
        let r = t.render(t.for_route(Some(0)), &lead_event()).unwrap();
        assert_eq!(r.text, "Deal in acme for ada@example.com");
        let blocks = r.blocks.unwrap();
        assert_eq!(blocks[0]["text"]["text"], "Analytical &amp; Co &lt;Engines&gt;");
        assert_eq!(blocks[1]["elements"][0]["text"], "0190-abc");
        // A route without a template of its own uses the default.
        let r = t.render(t.for_route(Some(1)), &lead_event()).unwrap();
        assert!(r.text.starts_with("New lead: Ada Lovelace"));
    }

    #[test]
    fn a_template_rendering_invalid_json_is_an_error_naming_it() {
        let mut c = config();
        c.template = Some(TemplateConfig {
            text: "hi".into(),
            blocks: Some("[{\"type\": \"section\", {{ lead.name|safe }}]".into()),
        });
        let t = Templates::new(&c).unwrap();
        let err = t.render(t.for_route(None), &lead_event()).unwrap_err();
        assert!(err.contains("default.blocks rendered invalid JSON"), "{err}");
        c.template = Some(TemplateConfig {
            text: "hi".into(),
            blocks: Some("{\"type\": \"divider\"}".into()),
        });
        let t = Templates::new(&c).unwrap();
        let err = t.render(t.for_route(None), &lead_event()).unwrap_err();
        assert!(err.contains("not render a JSON array"), "{err}");
    }

    #[test]
    fn blocks_rendering_to_nothing_mean_a_text_message() {
        let mut c = config();
        c.template = Some(TemplateConfig {
            text: "hi {{ lead.name }}".into(),
            blocks: Some(
                "{% if lead.score is not none and lead.score > 90 %}[{\"type\": \"divider\"}]{% endif %}".into(),
            ),
        });
        let t = Templates::new(&c).unwrap();
        let r = t.render(t.for_route(None), &lead_event()).unwrap();
        assert_eq!(
            r,
            Rendered {
                text: "hi Ada Lovelace".into(),
                blocks: None
            }
        );
    }

    #[test]
    fn the_readme_example_renders() {
        let mut c = config();
        c.routes.push(RouteConfig {
            event_types: vec!["deal.*".into(), "payment.succeeded".into()],
            channel: Some("C0DEALS01".into()),
            text: Some("Deal: {{ lead.name or lead.email }} · {{ event.envelope.event_type }}".into()),
            blocks: Some(
                r#"
[{"type": "section", "text": {"type": "mrkdwn",
  "text": "*{{ lead.name or lead.email }}* — order {{ event.commerce.order_id or "?" }} ({{ event.commerce.currency }})"}},
 {"type": "context", "elements": [{"type": "mrkdwn", "text": "event {{ lead.event_id }}"}]}]
"#
                .into(),
            ),
        });
        let t = Templates::new(&c).unwrap();
        let r = t.render(t.for_route(Some(0)), &lead_event()).unwrap();
        assert_eq!(r.text, "Deal: Ada Lovelace · lead.captured");
        let blocks = r.blocks.unwrap();
        assert_eq!(blocks[0]["text"]["text"], "*Ada Lovelace* — order ? ()");
        assert_eq!(blocks[1]["elements"][0]["text"], "event 0190-abc");
    }
}
