//! `[normalize]`: what the built-in tables cannot know about a deployment.
//!
//! ```toml
//! [normalize.form_types]          # form_type -> canonical type(s); overrides the built-ins
//! webinar = "lead.captured"
//! trial = ["lead.captured", "demo.requested"]   # several: one event each
//!
//! [normalize.sources]             # webhook source name -> built-in vendor table
//! stripe_eu = "stripe"
//!
//! [normalize.generic.sendgrid]    # a source without a built-in table
//! events = { open = "email.engaged", click = "email.engaged", unsubscribe = "email.engaged" }
//! channel = "email"               # activity.channel; activity.action = the vendor's type
//! occurred_at = { pointer = "/timestamp", unit = "seconds" }
//! fields = { email = "/email", url = "/url", campaign = "/category" }
//! ```

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::json::TimeUnit;
use crate::vocab;

/// The normalizer's configuration. Everything is optional: the default maps the built-in
/// vendors and forms and skips events of unknown sources.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NormalizeConfig {
    /// `form_type` (case-insensitive) -> canonical type, or a list of them (one event each).
    #[serde(default)]
    pub form_types: BTreeMap<String, OneOrMany>,
    /// Webhook source name -> built-in vendor (`stripe`, `shopify`, `hubspot`, `slack`), for
    /// sources not named after their vendor. A source named `stripe` needs no entry.
    #[serde(default)]
    pub sources: BTreeMap<String, String>,
    /// Webhook sources without a built-in table, by source name.
    #[serde(default)]
    pub generic: BTreeMap<String, GenericSource>,
}

/// One value or a list, e.g. `"lead.captured"` or `["/email", "/data[email]"]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn to_vec(&self) -> Vec<String> {
        match self {
            Self::One(v) => vec![v.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

impl Default for OneOrMany {
    fn default() -> Self {
        Self::Many(Vec::new())
    }
}

/// The declarative table of a generic source.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericSource {
    /// Vendor event type -> canonical type(s). Other types are skipped.
    pub events: BTreeMap<String, OneOrMany>,
    /// JSON pointer(s) to the event type, for deliveries whose type ingest could not read
    /// (form-encoded bodies such as Mailchimp's). The delivery's own type comes first.
    #[serde(default)]
    pub event_type: OneOrMany,
    /// Where the canonical fields are.
    #[serde(default)]
    pub fields: GenericFields,
    /// Where the time of the event is; without it `occurred_at` is the time of receipt.
    #[serde(default)]
    pub occurred_at: Option<TimeField>,
    /// Fills `activity` with this channel (e.g. `email`) and the vendor's type as the action.
    #[serde(default)]
    pub channel: Option<String>,
}

/// JSON pointers (a string or a list tried in order) to the canonical fields.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenericFields {
    /// Default `/email`.
    pub email: Option<OneOrMany>,
    #[serde(default)]
    pub first_name: OneOrMany,
    #[serde(default)]
    pub last_name: OneOrMany,
    #[serde(default)]
    pub full_name: OneOrMany,
    #[serde(default)]
    pub phone: OneOrMany,
    #[serde(default)]
    pub company: OneOrMany,
    #[serde(default)]
    pub job_title: OneOrMany,
    #[serde(default)]
    pub user_id: OneOrMany,
    #[serde(default)]
    pub anonymous_id: OneOrMany,
    /// An integer already in minor units.
    #[serde(default)]
    pub amount_minor: OneOrMany,
    /// Decimal text in major units (`"10.00"`).
    #[serde(default)]
    pub amount: OneOrMany,
    #[serde(default)]
    pub currency: OneOrMany,
    #[serde(default)]
    pub order_id: OneOrMany,
    /// `activity.object_id` (e.g. the message id).
    #[serde(default)]
    pub object_id: OneOrMany,
    /// `activity.campaign`.
    #[serde(default)]
    pub campaign: OneOrMany,
    /// `activity.url` (e.g. the clicked link).
    #[serde(default)]
    pub url: OneOrMany,
}

/// A timestamp's place and unit.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeField {
    pub pointer: String,
    pub unit: TimeUnit,
}

/// Canonical types, checked: each must be in the vocabulary.
pub(crate) fn targets(value: &OneOrMany, key: &str, errors: &mut Vec<String>) -> Vec<String> {
    let list = value.to_vec();
    if list.is_empty() {
        errors.push(format!("{key}: names no canonical type"));
    }
    for t in &list {
        if !vocab::is_canonical(t) {
            errors.push(format!(
                "{key}: `{t}` is not a canonical event type (one of {})",
                vocab::ALL.join(", ")
            ));
        }
    }
    list
}

/// JSON pointers, checked: each must be empty or start with `/`.
pub(crate) fn pointers(value: &OneOrMany, key: &str, errors: &mut Vec<String>) -> Vec<String> {
    let list = value.to_vec();
    for p in &list {
        if !p.is_empty() && !p.starts_with('/') {
            errors.push(format!("{key}: `{p}` is not a JSON pointer (it must start with `/`)"));
        }
    }
    list
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused() {
        let err = serde_json::from_value::<NormalizeConfig>(serde_json::json!({"form_type": {}})).unwrap_err();
        assert!(err.to_string().contains("unknown field `form_type`"), "{err}");
        let err = serde_json::from_value::<NormalizeConfig>(serde_json::json!({
            "generic": {"x": {"events": {}, "fields": {"mail": "/m"}}}
        }))
        .unwrap_err();
        assert!(err.to_string().contains("unknown field `mail`"), "{err}");
    }

    #[test]
    fn one_or_many() {
        let config: NormalizeConfig = serde_json::from_value(serde_json::json!({
            "form_types": {"webinar": "lead.captured", "trial": ["lead.captured", "demo.requested"]}
        }))
        .expect("parses");
        assert_eq!(config.form_types["trial"].to_vec().len(), 2);
        assert_eq!(config.form_types["webinar"], OneOrMany::One("lead.captured".into()));
    }
}
