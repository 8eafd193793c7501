//! Lead scoring: the rule set and the pure model the `nectar-score` processor applies.
//!
//! A lead's score is the sum of points for its events and one-time facts, decayed with a
//! half-life: `value(t) = value(t0) * 0.5^((t - t0) / half_life)`. Time is the events'
//! `occurred_at`, never the wall clock, so replaying the same events (after a crash, or on
//! another instance) gives exactly the same scores. Stages are thresholds on the score; a
//! lead crossing one upwards emits a lifecycle event.

use std::collections::BTreeMap;

use nectar_core::events::{Event, LeadScore, LeadState};
use serde::Deserialize;

pub use nectar_core::events::ERASURE;
/// Canonical type of the lifecycle event emitted when a lead crosses a threshold.
pub const STAGE_CHANGED: &str = "lead.stage_changed";

/// The `[score]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScoreRules {
    /// Points per canonical event type, e.g. `"demo.requested" = 30`.
    #[serde(default)]
    pub event_points: BTreeMap<String, f64>,
    /// Extra points per form type, e.g. `demo_request = 10`.
    #[serde(default)]
    pub form_type_points: BTreeMap<String, f64>,
    /// One-time points per fact about the lead: `business_email`, `free_mail`, `disposable`,
    /// `has_phone`, `has_company`.
    #[serde(default)]
    pub fact_points: BTreeMap<String, f64>,
    /// Score halves every this many days without new points. 0 disables decay.
    pub half_life_days: f64,
    /// Stage of a lead below every threshold.
    pub default_stage: String,
    /// Stages by minimum score, e.g. `{ name = "mql", at = 50 }`.
    #[serde(default)]
    pub thresholds: Vec<Threshold>,
    /// How many of a lead's most recent event ids its state remembers: an event whose id is
    /// among them was applied already and is dropped. normalize drops re-delivered event ids
    /// before score sees them; this is the second line, for events written past normalize.
    #[serde(default = "default_recent_event_ids")]
    pub recent_event_ids: usize,
}

fn default_recent_event_ids() -> usize {
    16
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Threshold {
    pub name: String,
    pub at: f64,
}

const FACTS: &[&str] = &["business_email", "free_mail", "disposable", "has_phone", "has_company"];

impl ScoreRules {
    pub fn validate(&self, errors: &mut Vec<String>) {
        if !(self.half_life_days >= 0.0 && self.half_life_days.is_finite()) {
            errors.push("score.half_life_days: must be a non-negative number".into());
        }
        for fact in self.fact_points.keys() {
            if !FACTS.contains(&fact.as_str()) {
                errors.push(format!(
                    "score.fact_points.{fact}: unknown fact (one of {})",
                    FACTS.join(", ")
                ));
            }
        }
        for (i, t) in self.thresholds.iter().enumerate() {
            if t.name.trim().is_empty() || t.name == self.default_stage {
                errors.push(format!(
                    "score.thresholds[{i}].name: must be non-empty and differ from default_stage"
                ));
            }
            if !t.at.is_finite() {
                errors.push(format!("score.thresholds[{i}].at: must be a number"));
            }
        }
        if !(1..=1000).contains(&self.recent_event_ids) {
            errors.push("score.recent_event_ids: must be between 1 and 1000".into());
        }
    }
}

/// The outcome of applying one event to a lead.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    pub state: LeadState,
    pub score: LeadScore,
}

/// The scoring model: rules with thresholds sorted.
#[derive(Debug, Clone)]
pub struct ScoreModel {
    rules: ScoreRules,
}

impl ScoreModel {
    pub fn new(mut rules: ScoreRules) -> Self {
        rules.thresholds.sort_by(|a, b| a.at.total_cmp(&b.at));
        Self { rules }
    }

    fn stage_rank(&self, stage: &str) -> usize {
        self.rules
            .thresholds
            .iter()
            .position(|t| t.name == stage)
            .map_or(0, |i| i + 1)
    }

    fn stage_for(&self, value: f64) -> String {
        self.rules
            .thresholds
            .iter()
            .rev()
            .find(|t| value >= t.at)
            .map_or_else(|| self.rules.default_stage.clone(), |t| t.name.clone())
    }

    /// `value` decayed from `from` to `to` (ms). Events out of order do not grow a score.
    pub fn decay(&self, value: f64, from: i64, to: i64) -> f64 {
        if self.rules.half_life_days <= 0.0 || to <= from {
            return value;
        }
        let half_life_ms = self.rules.half_life_days * 86_400_000.0;
        value * 0.5_f64.powf((to - from) as f64 / half_life_ms)
    }

    /// Whether `event` was applied to the lead already.
    ///
    /// Idempotence lives in the lead's own state, not in a second store: the ids and the
    /// score they produced are one changelog record, written in one transaction, so they can
    /// never disagree after a crash; the memory is bounded per lead, and a duplicate reaches
    /// score on the lead's own partition, where its state already is.
    pub fn already_applied(previous: Option<&LeadState>, event: &Event) -> bool {
        previous.is_some_and(|s| s.recent_event_ids.contains(&event.envelope.event_id))
    }

    /// Apply `event` to the lead's `previous` state.
    pub fn apply(&self, previous: Option<&LeadState>, event: &Event, lead_key: &str) -> Applied {
        let at = event.envelope.occurred_at;
        let mut state = previous.cloned().unwrap_or_else(|| LeadState {
            lead_key: lead_key.to_owned(),
            workspace_id: event.envelope.workspace_id.clone(),
            value: 0.0,
            as_of: at,
            stage: self.rules.default_stage.clone(),
            facts: Vec::new(),
            events: 0,
            recent_event_ids: Vec::new(),
        });
        let before = self.decay(state.value, state.as_of, at);
        let mut points = self
            .rules
            .event_points
            .get(&event.envelope.event_type)
            .copied()
            .unwrap_or(0.0);
        if let Some(form_type) = event.form.as_ref().and_then(|f| f.form_type.as_ref()) {
            points += self.rules.form_type_points.get(form_type).copied().unwrap_or(0.0);
        }
        for fact in facts(event) {
            if !state.facts.iter().any(|f| f == fact)
                && let Some(p) = self.rules.fact_points.get(fact)
            {
                points += p;
                state.facts.push(fact.to_owned());
            }
        }
        let value = (before + points).max(0.0);
        let stage = self.stage_for(value);
        let crossed = (self.stage_rank(&stage) > self.stage_rank(&state.stage)).then(|| stage.clone());
        state.value = value;
        state.as_of = state.as_of.max(at);
        state.stage = stage.clone();
        state.events += 1;
        state.recent_event_ids.push(event.envelope.event_id.clone());
        let excess = state.recent_event_ids.len().saturating_sub(self.rules.recent_event_ids);
        state.recent_event_ids.drain(..excess);
        Applied {
            score: LeadScore {
                value,
                delta: value - before,
                stage,
                crossed,
            },
            state,
        }
    }
}

/// Facts the event tells about its lead.
fn facts(event: &Event) -> Vec<&'static str> {
    let mut facts = Vec::new();
    if let Some(e) = &event.enrichment {
        match (e.disposable, e.free_mail, &e.company_domain) {
            (Some(true), _, _) => facts.push("disposable"),
            (_, Some(true), _) => facts.push("free_mail"),
            (_, _, Some(_)) => facts.push("business_email"),
            _ => {}
        }
        if e.phone_e164.is_some() {
            facts.push("has_phone");
        }
    }
    if event
        .person
        .as_ref()
        .is_some_and(|p| p.company.as_deref().is_some_and(|c| !c.trim().is_empty()))
    {
        facts.push("has_company");
    }
    facts
}

#[cfg(test)]
mod tests {
    use super::*;
    use nectar_core::events::{Enrichment, Envelope, FormInfo};

    fn rules() -> ScoreRules {
        ScoreRules {
            event_points: BTreeMap::from([("lead.captured".into(), 10.0), ("demo.requested".into(), 30.0)]),
            form_type_points: BTreeMap::from([("demo_request".into(), 5.0)]),
            fact_points: BTreeMap::from([("business_email".into(), 10.0), ("free_mail".into(), -5.0)]),
            half_life_days: 30.0,
            default_stage: "lead".into(),
            thresholds: vec![
                Threshold {
                    name: "sql".into(),
                    at: 100.0,
                },
                Threshold {
                    name: "mql".into(),
                    at: 50.0,
                },
            ],
            recent_event_ids: 3,
        }
    }

    fn event(event_type: &str, at: i64) -> Event {
        Event::new(Envelope {
            event_id: format!("{event_type}-{at}"),
            event_type: event_type.into(),
            occurred_at: at,
            received_at: at,
            source: "test".into(),
            workspace_id: "acme".into(),
            lead_key: Some("k".into()),
            trace_parent: None,
            consent: None,
        })
    }

    #[test]
    fn points_facts_once_and_thresholds() {
        let model = ScoreModel::new(rules());
        let mut first = event("lead.captured", 0);
        first.enrichment = Some(Enrichment {
            company_domain: Some("acme.com".into()),
            free_mail: Some(false),
            ..Default::default()
        });
        let a = model.apply(None, &first, "k");
        assert_eq!(a.score.value, 20.0, "10 for the event, 10 for the business e-mail");
        assert_eq!(a.score.stage, "lead");
        let mut demo = event("demo.requested", 0);
        demo.form = Some(FormInfo {
            form_id: "demo".into(),
            form_type: Some("demo_request".into()),
            fields: Default::default(),
        });
        demo.enrichment = first.enrichment.clone();
        let b = model.apply(Some(&a.state), &demo, "k");
        assert_eq!(b.score.value, 55.0, "the business e-mail counts once");
        assert_eq!(b.score.crossed.as_deref(), Some("mql"));
        let c = model.apply(Some(&b.state), &event("lead.captured", 0), "k");
        assert_eq!(c.score.crossed, None, "no crossing without a stage change");
    }

    #[test]
    fn score_halves_after_a_half_life_and_never_grows_backwards() {
        let model = ScoreModel::new(rules());
        let a = model.apply(None, &event("demo.requested", 0), "k");
        let thirty_days = 30 * 86_400_000;
        let b = model.apply(Some(&a.state), &event("unknown.type", thirty_days), "k");
        assert!((b.score.value - 15.0).abs() < 1e-9, "{}", b.score.value);
        let late = model.apply(Some(&b.state), &event("unknown.type", 10), "k");
        assert!(
            (late.score.value - 15.0).abs() < 1e-9,
            "an older event does not undo decay"
        );
    }

    #[test]
    fn an_applied_event_id_is_recognised_while_among_the_last_n() {
        let model = ScoreModel::new(rules());
        let first = event("lead.captured", 1);
        let a = model.apply(None, &first, "k");
        assert!(ScoreModel::already_applied(Some(&a.state), &first));
        assert!(!ScoreModel::already_applied(None, &first));
        let mut state = a.state;
        for at in 2..=4 {
            let e = event("lead.captured", at);
            assert!(!ScoreModel::already_applied(Some(&state), &e));
            state = model.apply(Some(&state), &e, "k").state;
        }
        assert_eq!(
            state.recent_event_ids,
            ["lead.captured-2", "lead.captured-3", "lead.captured-4"],
            "bounded to recent_event_ids, newest last"
        );
        assert!(
            !ScoreModel::already_applied(Some(&state), &first),
            "forgotten past the bound"
        );
    }

    #[test]
    fn validation_names_the_key() {
        let mut bad = rules();
        bad.fact_points.insert("astrology".into(), 1.0);
        bad.half_life_days = -1.0;
        let mut errors = Vec::new();
        bad.validate(&mut errors);
        assert!(
            errors.iter().any(|e| e.contains("score.fact_points.astrology")),
            "{errors:?}"
        );
        assert!(errors.iter().any(|e| e.contains("score.half_life_days")), "{errors:?}");
    }
}
