//! App events (`nectar.raw.apps`): the app's own type under `app.`, unless it is canonical
//! already; the properties flattened into `attributes`, the well-known ones also into `person`,
//! `commerce` and `context`.

use std::collections::HashMap;

use nectar_core::events::{AppEvent, Commerce, Context, Event, Person};
use serde_json::{Map, Value};

use crate::json::{flatten, text};
use crate::{Reject, fan_out, money, vocab};

/// Properties read into `person` (canonical field: property names in order of preference).
const FIRST_NAME: &[&str] = &["first_name"];
const LAST_NAME: &[&str] = &["last_name"];
const FULL_NAME: &[&str] = &["full_name", "name"];
const PHONE: &[&str] = &["phone"];
const COMPANY: &[&str] = &["company"];
const JOB_TITLE: &[&str] = &["job_title", "title"];

/// The canonical type of an app's event type.
pub(crate) fn canonical_type(app_type: &str) -> String {
    let t = app_type.trim();
    if t == vocab::LEAD_ERASURE_REQUESTED || vocab::ERASURE_ALIASES.contains(&t) {
        vocab::LEAD_ERASURE_REQUESTED.to_owned()
    } else if vocab::is_canonical(t) || t.starts_with(vocab::APP_PREFIX) {
        t.to_owned()
    } else {
        format!("{}{t}", vocab::APP_PREFIX)
    }
}

pub(crate) fn normalize(raw: &AppEvent) -> Result<Vec<Event>, Reject> {
    let app_type = &raw.envelope.event_type;
    let invalid = |what: String| Reject::InvalidPayload(format!("{} {app_type}: {what}", raw.envelope.source));
    let properties: Map<String, Value> = match serde_json::from_str(&raw.properties_json) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return Err(invalid(format!(
                "properties_json is not a JSON object but {}",
                kind(&other)
            )));
        }
        Err(e) => return Err(invalid(format!("properties_json is not valid JSON: {e}"))),
    };
    let prop = |names: &[&str]| names.iter().find_map(|n| properties.get(*n).and_then(text));
    let non_empty = |v: &Option<String>| v.as_deref().map(str::trim).filter(|v| !v.is_empty()).map(str::to_owned);

    let person = Person {
        email: non_empty(&raw.email).or_else(|| prop(&["email"])),
        first_name: prop(FIRST_NAME),
        last_name: prop(LAST_NAME),
        full_name: prop(FULL_NAME),
        phone: prop(PHONE),
        company: prop(COMPANY),
        job_title: prop(JOB_TITLE),
        user_id: non_empty(&raw.user_id),
        anonymous_id: non_empty(&raw.anonymous_id),
        external_ids: HashMap::new(),
    };
    let commerce = commerce(&properties).map_err(invalid)?;
    let context = Context {
        page_url: prop(&["page_url"]),
        referrer: prop(&["referrer"]),
        user_agent: prop(&["user_agent"]),
        ip: prop(&["ip"]),
    };

    let mut event = Event::new(raw.envelope.clone());
    for (key, value) in &properties {
        flatten(key, value, &mut event.attributes);
    }
    event.person = (person != Person::default()).then_some(person);
    event.commerce = commerce;
    event.context = (context != Context::default()).then_some(context);
    Ok(fan_out(event, &[canonical_type(app_type)]))
}

/// `amount_minor` (an integer in minor units) with `currency`, and the commerce ids, when the
/// app sent any of them.
fn commerce(properties: &Map<String, Value>) -> Result<Option<Commerce>, String> {
    let prop = |name: &str| properties.get(name).and_then(text);
    let currency = prop("currency")
        .map(|c| money::currency_code(&c).map_err(|e| format!("property `currency`: {e}")))
        .transpose()?;
    let amount_minor = match properties.get("amount_minor").filter(|v| !v.is_null()) {
        None => None,
        Some(v) => {
            let n = v
                .as_i64()
                .ok_or_else(|| format!("property `amount_minor`: {v} is not an integer"))?;
            if currency.is_none() {
                return Err("property `amount_minor` needs a `currency`".to_owned());
            }
            Some(n)
        }
    };
    let commerce = Commerce {
        amount_minor,
        currency,
        order_id: prop("order_id"),
        invoice_id: prop("invoice_id"),
        subscription_id: prop("subscription_id"),
        plan: prop("plan"),
        status: None,
    };
    Ok((commerce != Commerce::default()).then_some(commerce))
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
