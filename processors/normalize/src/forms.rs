//! Web forms (`nectar.raw.forms`): the form's type decides the canonical type, the well-known
//! fields become the person, the rest stays in `form.fields`.

use std::collections::HashMap;

use nectar_core::events::{Context, Event, FormInfo, FormSubmitted, Person};

use crate::fan_out;
use crate::vocab::{DEMO_REQUESTED, LEAD_CAPTURED, LEAD_ERASURE_REQUESTED, NEWSLETTER_SUBSCRIBED};

/// The built-in `form_type` table; anything else (and no type) is a lead capture.
const FORM_TYPES: &[(&str, &str)] = &[
    ("contact", LEAD_CAPTURED),
    ("signup", LEAD_CAPTURED),
    ("demo_request", DEMO_REQUESTED),
    ("demo", DEMO_REQUESTED),
    ("newsletter", NEWSLETTER_SUBSCRIBED),
    ("erasure", LEAD_ERASURE_REQUESTED),
];

/// Person fields: canonical field, form field names in order of preference. The form fields
/// used are removed from `form.fields`.
const FIRST_NAME: &[&str] = &["first_name"];
const LAST_NAME: &[&str] = &["last_name"];
const FULL_NAME: &[&str] = &["full_name", "name"];
const PHONE: &[&str] = &["phone"];
const COMPANY: &[&str] = &["company"];
const JOB_TITLE: &[&str] = &["job_title", "title"];

/// The canonical types of a form type: the configured ones, else the built-in, else
/// `lead.captured`.
pub(crate) fn canonical_types(overrides: &HashMap<String, Vec<String>>, form_type: Option<&str>) -> Vec<String> {
    let key = form_type.map(|t| t.trim().to_lowercase()).unwrap_or_default();
    if let Some(types) = overrides.get(&key) {
        return types.clone();
    }
    let builtin = FORM_TYPES
        .iter()
        .find(|(t, _)| *t == key)
        .map_or(LEAD_CAPTURED, |(_, c)| c);
    vec![builtin.to_owned()]
}

pub(crate) fn normalize(overrides: &HashMap<String, Vec<String>>, raw: &FormSubmitted) -> Vec<Event> {
    let mut fields = raw.fields.clone();
    let mut take = |names: &[&str]| {
        // Every listed name is consumed; the first non-empty one is the value.
        let values: Vec<String> = names.iter().filter_map(|n| fields.remove(*n)).collect();
        values.into_iter().map(|v| v.trim().to_owned()).find(|v| !v.is_empty())
    };
    let person = Person {
        email: raw
            .email
            .as_deref()
            .map(str::trim)
            .filter(|e| !e.is_empty())
            .map(str::to_owned),
        first_name: take(FIRST_NAME),
        last_name: take(LAST_NAME),
        full_name: take(FULL_NAME),
        phone: take(PHONE),
        company: take(COMPANY),
        job_title: take(JOB_TITLE),
        user_id: None,
        anonymous_id: raw.anonymous_id.clone().filter(|a| !a.trim().is_empty()),
        external_ids: HashMap::new(),
    };
    let context = Context {
        page_url: raw.page_url.clone(),
        referrer: raw.referrer.clone(),
        user_agent: raw.user_agent.clone(),
        ip: raw.client_ip.clone(),
    };
    let mut event = Event::new(raw.envelope.clone());
    event.person = (person != Person::default()).then_some(person);
    event.context = (context != Context::default()).then_some(context);
    event.form = Some(FormInfo {
        form_id: raw.form_id.clone(),
        form_type: raw.form_type.clone(),
        fields,
    });
    fan_out(event, &canonical_types(overrides, raw.form_type.as_deref()))
}
