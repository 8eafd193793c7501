//! Routing rules: CEL expressions over the canonical event that choose the sinks it goes to.
//!
//! Each rule is `{ name, when, sinks }`; `when` is a [CEL](https://cel.dev) expression over
//! `event` (the `io.nectar.Event` as a map: `event.envelope.event_type`,
//! `event.score.value`, `event.enrichment.free_mail`, ...). Sections that are null must be
//! tested first (`event.score != null && event.score.value >= 80.0`). An event goes to the
//! union of the sinks of every rule that matches; a lead erasure request goes to every sink
//! that stores people, whatever the rules say. Rules compile at start; an error names the
//! rule.
//!
//! Route reads only the fields its rules use ([`projection`]): [`Router::fields`] is what
//! to decode, [`Router::route_value`] routes what was decoded.

use std::collections::BTreeSet;
use std::sync::Arc;

use cel::{Context, Env, Program, Value};
use nectar_core::events::Event;
use serde::Deserialize;

pub use nectar_core::events::ERASURE;

pub mod projection;

use projection::Fields;

/// The `[route]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Sinks that store people: every erasure request is delivered to each of them.
    #[serde(default)]
    pub erasure_sinks: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RuleConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleConfig {
    pub name: String,
    /// A CEL expression over `event` that yields a bool.
    pub when: String,
    pub sinks: Vec<String>,
}

struct Rule {
    name: String,
    program: Program,
    sinks: Vec<String>,
}

/// Why a rule did not give an answer for an event.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleError {
    pub rule: String,
    pub message: String,
}

/// The compiled rules.
pub struct Router {
    rules: Vec<Rule>,
    erasure_sinks: Vec<String>,
    /// The standard environment, built once (building it is far dearer than a rule).
    env: Arc<Env>,
    /// What the rules read of the event, with the envelope's id and type.
    fields: Fields,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Router")
            .field("rules", &self.rules.iter().map(|r| &r.name).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

fn valid_sink(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
}

impl Router {
    /// Compile every rule; the errors name each rule that is wrong and why.
    pub fn new(config: &RouteConfig) -> Result<Self, Vec<String>> {
        let mut errors = Vec::new();
        let mut rules = Vec::new();
        let mut names = BTreeSet::new();
        for (i, rule) in config.rules.iter().enumerate() {
            let key = format!("route.rules[{i}] ({})", rule.name);
            if rule.name.trim().is_empty() {
                errors.push(format!("route.rules[{i}].name: must not be empty"));
            } else if !names.insert(rule.name.clone()) {
                errors.push(format!("{key}: a rule of that name already exists"));
            }
            if rule.sinks.is_empty() {
                errors.push(format!("{key}.sinks: name at least one sink"));
            }
            for sink in &rule.sinks {
                if !valid_sink(sink) {
                    errors.push(format!(
                        "{key}.sinks: `{sink}` is not a valid sink name (a-z, 0-9, - and _)"
                    ));
                }
            }
            match Program::compile(&rule.when) {
                Ok(program) => {
                    let unknown: Vec<_> = projection::free_variables(program.expression())
                        .into_iter()
                        .filter(|v| v != projection::ROOT)
                        .collect();
                    if unknown.is_empty() {
                        rules.push(Rule {
                            name: rule.name.clone(),
                            program,
                            sinks: rule.sinks.clone(),
                        });
                    } else {
                        errors.push(format!(
                            "{key}.when: unknown variable(s) {} (only `event` exists)",
                            unknown.join(", ")
                        ));
                    }
                }
                Err(e) => errors.push(format!("{key}.when: {e}")),
            }
        }
        for sink in &config.erasure_sinks {
            if !valid_sink(sink) {
                errors.push(format!("route.erasure_sinks: `{sink}` is not a valid sink name"));
            }
        }
        if errors.is_empty() {
            let mut fields = Fields::default();
            fields.add(&["envelope", "event_id"]);
            fields.add(&["envelope", "event_type"]);
            for rule in &rules {
                fields.add_expression(rule.program.expression());
            }
            Ok(Self {
                rules,
                erasure_sinks: config.erasure_sinks.clone(),
                env: Arc::new(Env::stdlib()),
                fields,
            })
        } else {
            Err(errors)
        }
    }

    /// Every sink any rule (or the erasure list) can send to.
    pub fn all_sinks(&self) -> BTreeSet<String> {
        self.rules
            .iter()
            .flat_map(|r| r.sinks.iter().cloned())
            .chain(self.erasure_sinks.iter().cloned())
            .collect()
    }

    /// The fields the rules read (and the envelope's `event_id` and `event_type`): what
    /// [`route_value`](Self::route_value) needs of an event.
    pub fn fields(&self) -> &Fields {
        &self.fields
    }

    /// [`route_value`](Self::route_value) of a whole decoded event.
    pub fn route(&self, event: &Event) -> Routed {
        match cel::to_value(event) {
            Ok(value) => self.route_value(value),
            Err(e) => Routed {
                failed: vec![RuleError {
                    rule: "*".into(),
                    message: format!("the event cannot be evaluated: {e}"),
                }],
                ..Routed::default()
            },
        }
    }

    /// The sinks `event` (a CEL map holding at least [`fields`](Self::fields)) goes to, the
    /// rules that matched, and the rules that failed on it (a failing rule counts as not
    /// matching).
    pub fn route_value(&self, event: Value) -> Routed {
        let mut sinks = BTreeSet::new();
        let mut matched = Vec::new();
        let mut failed = Vec::new();
        if envelope_str(&event, "event_type") == Some(ERASURE) {
            sinks.extend(self.erasure_sinks.iter().cloned());
        }
        let mut context = Context::with_env(self.env.clone());
        context.add_variable_from_value(projection::ROOT, event);
        for rule in &self.rules {
            match rule.program.execute(&context) {
                Ok(Value::Bool(true)) => {
                    sinks.extend(rule.sinks.iter().cloned());
                    matched.push(rule.name.clone());
                }
                Ok(Value::Bool(false)) => {}
                Ok(other) => failed.push(RuleError {
                    rule: rule.name.clone(),
                    message: format!("yielded {other:?}, not a bool"),
                }),
                Err(e) => failed.push(RuleError {
                    rule: rule.name.clone(),
                    message: e.to_string(),
                }),
            }
        }
        Routed { sinks, matched, failed }
    }
}

/// Where an event goes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routed {
    pub sinks: BTreeSet<String>,
    /// The rules that matched, in configuration order.
    pub matched: Vec<String>,
    pub failed: Vec<RuleError>,
}

/// `event.envelope.<field>` of a CEL event map, if it is a string.
pub fn envelope_str<'a>(event: &'a Value, field: &str) -> Option<&'a str> {
    use cel::objects::KeyRef;
    let Value::Map(event) = event else { return None };
    let Some(Value::Map(envelope)) = event.get(&KeyRef::String("envelope")) else {
        return None;
    };
    match envelope.get(&KeyRef::String(field)) {
        Some(Value::String(s)) => Some(s.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nectar_core::events::{Envelope, LeadScore};

    fn rule(name: &str, when: &str, sinks: &[&str]) -> RuleConfig {
        RuleConfig {
            name: name.into(),
            when: when.into(),
            sinks: sinks.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn config() -> RouteConfig {
        RouteConfig {
            erasure_sinks: vec!["hubspot".into(), "postgres".into()],
            rules: vec![
                rule(
                    "hot",
                    "event.score != null && event.score.value >= 80.0",
                    &["slack", "salesforce"],
                ),
                rule("leads", "event.envelope.lead_key != null", &["hubspot"]),
                rule(
                    "purchases",
                    "event.envelope.event_type in ['payment.succeeded', 'order.created']",
                    &["bigquery"],
                ),
            ],
        }
    }

    fn event(event_type: &str, score: Option<f64>) -> Event {
        let mut e = Event::new(Envelope {
            event_id: "e".into(),
            event_type: event_type.into(),
            occurred_at: 0,
            received_at: 0,
            source: "t".into(),
            workspace_id: "acme".into(),
            lead_key: Some("k".into()),
            trace_parent: None,
            consent: None,
        });
        e.score = score.map(|value| LeadScore {
            value,
            delta: 0.0,
            stage: "lead".into(),
            crossed: None,
        });
        e
    }

    fn sinks(router: &Router, e: &Event) -> Vec<String> {
        router.route(e).sinks.into_iter().collect()
    }

    #[test]
    fn rules_fan_out_to_the_union_of_matching_sinks() {
        let router = Router::new(&config()).expect("valid");
        assert_eq!(
            sinks(&router, &event("lead.captured", Some(90.0))),
            ["hubspot", "salesforce", "slack"]
        );
        assert_eq!(sinks(&router, &event("lead.captured", Some(10.0))), ["hubspot"]);
        assert_eq!(
            sinks(&router, &event("payment.succeeded", None)),
            ["bigquery", "hubspot"]
        );
        let mut anonymous = event("page.viewed", None);
        anonymous.envelope.lead_key = None;
        assert!(sinks(&router, &anonymous).is_empty());
    }

    #[test]
    fn erasure_goes_to_every_sink_that_stores_people() {
        let router = Router::new(&config()).expect("valid");
        assert_eq!(sinks(&router, &event(ERASURE, None)), ["hubspot", "postgres"]);
    }

    #[test]
    fn invalid_rules_are_refused_with_their_names() {
        let bad = RouteConfig {
            erasure_sinks: vec![],
            rules: vec![
                rule("broken", "event.score >=", &["slack"]),
                rule("typo", "evnt.x == 1", &["Slack!"]),
                rule("empty", "true", &[]),
            ],
        };
        let errors = Router::new(&bad).expect_err("invalid");
        let text = errors.join("\n");
        assert!(text.contains("route.rules[0] (broken).when"), "{text}");
        assert!(
            text.contains("route.rules[1] (typo).when: unknown variable(s) evnt"),
            "{text}"
        );
        assert!(text.contains("`Slack!` is not a valid sink name"), "{text}");
        assert!(text.contains("route.rules[2] (empty).sinks"), "{text}");
    }

    #[test]
    fn a_rule_that_fails_on_an_event_does_not_match_and_is_reported() {
        let router = Router::new(&RouteConfig {
            erasure_sinks: vec![],
            rules: vec![rule("no-null-check", "event.score.value > 1.0", &["slack"])],
        })
        .expect("valid");
        let routed = router.route(&event("lead.captured", None));
        assert!(routed.sinks.is_empty());
        assert_eq!(routed.failed.len(), 1);
        assert_eq!(routed.failed[0].rule, "no-null-check");
    }
}
