//! `nectar-normalize` as a library: pure functions from raw, source-shaped events (forms, app
//! events, vendor webhooks) to canonical `io.nectar.Event`s. No Kafka here; `main.rs` runs it
//! exactly once between the raw topics and `nectar.events`.
//!
//! * Each raw event becomes zero or more canonical events whose `envelope.event_type` is from
//!   the fixed vocabulary in [`vocab`] (or `app.<type>` for an app's own types). `MAPPING.md`
//!   lists every mapping and the reasoning behind it.
//! * Vendor events Nectar does not map are skipped (`Ok(vec![])`), not rejected. A [`Reject`]
//!   means a raw event claims a mapped type but cannot be read; it goes to the dead-letter
//!   topic with the reason.
//! * Event ids: one output keeps the raw event's id, so replays dedupe downstream; several
//!   outputs get `derived_event_id(workspace, "normalize", "<raw id>#<n>")`.
//! * `lead_key` is recomputed from the best person details found, so a webhook about a person
//!   gets the same key as that person's form submissions.

mod apps;
mod config;
pub mod dedup;
mod forms;
mod json;
mod money;
mod rules;
mod vendors;
pub mod vocab;
mod webhooks;

#[cfg(test)]
mod tests;

use std::collections::HashMap;

use nectar_core::events::{AppEvent, Event, FormSubmitted, WebhookReceived};
use nectar_core::ids;

pub use config::{GenericFields, GenericSource, NormalizeConfig, OneOrMany, TimeField};
pub use json::TimeUnit;

/// Why a raw event can never be normalized (it goes to the dead-letter topic with this reason).
/// `vendor` is the webhook source (`WebhookReceived.vendor`), `event_type` the vendor's type.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Reject {
    /// The body of a mapped vendor event is not what the vendor sends (not JSON, not an object).
    #[error("{vendor} {event_type}: the body cannot be read: {reason}")]
    InvalidBody {
        vendor: String,
        event_type: String,
        reason: String,
    },
    /// A field the mapping cannot do without is absent (e.g. a payment without an amount).
    #[error("{vendor} {event_type}: required field `{field}` is missing")]
    MissingField {
        vendor: String,
        event_type: String,
        field: String,
    },
    /// A field is present but unreadable (an amount that is not a number, a bad currency code).
    #[error("{vendor} {event_type}: field `{field}` is invalid: {reason}")]
    InvalidField {
        vendor: String,
        event_type: String,
        field: String,
        reason: String,
    },
    /// An app event whose properties cannot be read.
    #[error("invalid payload: {0}")]
    InvalidPayload(String),
}

/// The mapping tables, built once from the configuration.
#[derive(Debug)]
pub struct Normalizer {
    /// Lower-cased `form_type` -> canonical types (config overrides only; built-ins in `forms`).
    form_types: HashMap<String, Vec<String>>,
    /// Built-in vendor -> vendor event type -> row.
    vendors: HashMap<&'static str, HashMap<&'static str, (&'static rules::Vendor, &'static rules::Rule)>>,
    /// Webhook source name -> built-in vendor, for sources not named after their vendor.
    sources: HashMap<String, &'static str>,
    /// Generic sources by name.
    generic: HashMap<String, webhooks::Generic>,
}

impl Normalizer {
    /// Builds the tables; `Err` lists every problem in the configuration.
    pub fn new(config: &NormalizeConfig) -> Result<Self, String> {
        let mut errors = Vec::new();
        let mut vendors: HashMap<_, HashMap<_, _>> = HashMap::new();
        for vendor in vendors::VENDORS {
            let table = vendors.entry(vendor.name).or_default();
            for rule in vendor.rules {
                if table.insert(rule.event, (vendor, rule)).is_some() {
                    errors.push(format!(
                        "built-in table {}: {} is mapped twice",
                        vendor.name, rule.event
                    ));
                }
            }
        }
        let form_types = config
            .form_types
            .iter()
            .map(|(form_type, targets)| {
                let key = format!("form_types.{form_type}");
                (
                    form_type.trim().to_lowercase(),
                    config::targets(targets, &key, &mut errors),
                )
            })
            .collect();
        let mut sources = HashMap::new();
        for (source, vendor) in &config.sources {
            match vendors::VENDORS.iter().find(|v| v.name == vendor) {
                Some(v) => {
                    sources.insert(source.clone(), v.name);
                }
                None => errors.push(format!(
                    "sources.{source}: `{vendor}` is not a built-in vendor ({})",
                    vendors::VENDORS.iter().map(|v| v.name).collect::<Vec<_>>().join(", ")
                )),
            }
        }
        let mut generic = HashMap::new();
        for (source, spec) in &config.generic {
            if vendors.contains_key(source.as_str()) || sources.contains_key(source) {
                errors.push(format!(
                    "generic.{source}: the source already uses a built-in vendor table"
                ));
                continue;
            }
            if let Some(g) = webhooks::Generic::new(source, spec, &mut errors) {
                generic.insert(source.clone(), g);
            }
        }
        if errors.is_empty() {
            Ok(Self {
                form_types,
                vendors,
                sources,
                generic,
            })
        } else {
            Err(errors.join("; "))
        }
    }

    /// A web form submission: `lead.captured`, `demo.requested`, `newsletter.subscribed` or
    /// `lead.erasure_requested` by its `form_type` (configurable). Never rejected.
    pub fn form(&self, raw: &FormSubmitted) -> Result<Vec<Event>, Reject> {
        Ok(forms::normalize(&self.form_types, raw))
    }

    /// An app event: `app.<type>`, or the type itself when it is canonical.
    pub fn app(&self, raw: &AppEvent) -> Result<Vec<Event>, Reject> {
        apps::normalize(raw)
    }

    /// A vendor webhook, through the vendor's table or the source's generic table.
    pub fn webhook(&self, raw: &WebhookReceived) -> Result<Vec<Event>, Reject> {
        webhooks::normalize(self, raw)
    }
}

/// One canonical event per type in `types`, from `template` (whose envelope is the raw one).
/// Sets the type, the id (the raw id for one output, derived ids for several) and the lead key.
fn fan_out(mut template: Event, types: &[String]) -> Vec<Event> {
    let envelope = &mut template.envelope;
    let person = template.person.as_ref();
    envelope.lead_key = ids::lead_key(
        &envelope.workspace_id,
        person.and_then(|p| p.email.as_deref()),
        person.and_then(|p| p.anonymous_id.as_deref()),
    );
    if let [only] = types {
        template.envelope.event_type = only.clone();
        return vec![template];
    }
    types
        .iter()
        .enumerate()
        .map(|(n, event_type)| {
            let mut event = template.clone();
            let raw_id = &template.envelope.event_id;
            event.envelope.event_id =
                ids::derived_event_id(&template.envelope.workspace_id, "normalize", &format!("{raw_id}#{n}"));
            event.envelope.event_type = event_type.clone();
            event
        })
        .collect()
}
