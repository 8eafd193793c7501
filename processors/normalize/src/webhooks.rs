//! Vendor webhooks (`nectar.raw.webhooks`): the source's vendor table (built-in) or its generic
//! table (configured) maps the vendor's event type; other types are skipped.

use std::collections::HashMap;

use nectar_core::events::{Activity, Commerce, Event, Person, WebhookReceived};
use serde_json::{Map, Value};

use crate::config::{self, GenericSource, OneOrMany};
use crate::json::{self, first_text};
use crate::rules::{self, AmountKind, FieldError, Mapped};
use crate::{Normalizer, Reject, fan_out};

/// Where Shopify puts the event type when ingest did not record one (headers are stored with
/// their names lower-cased, but compare without regard to case anyway).
const SHOPIFY_TOPIC_HEADER: &str = "x-shopify-topic";

pub(crate) fn normalize(normalizer: &Normalizer, raw: &WebhookReceived) -> Result<Vec<Event>, Reject> {
    let vendor = normalizer
        .sources
        .get(&raw.vendor)
        .copied()
        .unwrap_or(raw.vendor.as_str());
    if let Some(table) = normalizer.vendors.get(vendor) {
        let event_type = raw.vendor_event_type.clone().or_else(|| {
            (vendor == "shopify")
                .then(|| header(raw, SHOPIFY_TOPIC_HEADER))
                .flatten()
                .map(str::to_owned)
        });
        let Some(event_type) = event_type else {
            return Ok(Vec::new());
        };
        let Some((vendor, rule)) = table.get(event_type.as_str()) else {
            return Ok(Vec::new());
        };
        let body = parse(raw, &event_type)?;
        if rule.when.is_some_and(|when| !when(&body)) {
            return Ok(Vec::new());
        }
        let mapped = rules::apply(vendor, rule, &body).map_err(|e| reject(raw, &event_type, e))?;
        return Ok(emit(raw, &event_type, mapped, &[rule.canonical.to_owned()]));
    }
    match normalizer.generic.get(&raw.vendor) {
        Some(generic) => generic.normalize(raw),
        None => Ok(Vec::new()),
    }
}

/// The canonical events of a mapped webhook.
fn emit(raw: &WebhookReceived, event_type: &str, mapped: Mapped, types: &[String]) -> Vec<Event> {
    let mut event = Event::new(raw.envelope.clone());
    if let Some(at) = mapped.occurred_at {
        event.envelope.occurred_at = at;
    }
    event.person = mapped.person;
    event.commerce = mapped.commerce;
    event.activity = mapped.activity;
    event.context = mapped.context;
    event.attributes = mapped.attributes;
    let base = [
        ("vendor", Some(raw.vendor.clone())),
        ("vendor_event_type", Some(event_type.to_owned())),
        ("vendor_event_id", raw.vendor_event_id.clone()),
        ("verified", Some(raw.verified.to_string())),
    ];
    for (key, value) in base {
        if let Some(value) = value {
            event.attributes.insert(key.to_owned(), value);
        }
    }
    fan_out(event, types)
}

fn header<'a>(raw: &'a WebhookReceived, name: &str) -> Option<&'a str> {
    raw.headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim())
        .filter(|v| !v.is_empty())
}

fn reject(raw: &WebhookReceived, event_type: &str, error: FieldError) -> Reject {
    let (vendor, event_type) = (raw.vendor.clone(), event_type.to_owned());
    match error {
        FieldError::Missing(field) => Reject::MissingField {
            vendor,
            event_type,
            field,
        },
        FieldError::Invalid { field, reason } => Reject::InvalidField {
            vendor,
            event_type,
            field,
            reason,
        },
    }
}

/// The body as a JSON object; form-encoded bodies (by content type) become an object of
/// strings, repeated names joined with `,`.
fn parse(raw: &WebhookReceived, event_type: &str) -> Result<Value, Reject> {
    let invalid = |reason: String| Reject::InvalidBody {
        vendor: raw.vendor.clone(),
        event_type: event_type.to_owned(),
        reason,
    };
    let form_encoded = raw.content_type.as_deref().is_some_and(|c| {
        c.trim()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    });
    if form_encoded {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_bytes(&raw.body).map_err(|e| invalid(format!("not valid form encoding: {e}")))?;
        let mut object = Map::new();
        for (key, value) in pairs {
            match object.get_mut(&key) {
                Some(Value::String(existing)) => {
                    existing.push(',');
                    existing.push_str(&value);
                }
                _ => {
                    object.insert(key, Value::String(value));
                }
            }
        }
        return Ok(Value::Object(object));
    }
    match serde_json::from_slice::<Value>(&raw.body) {
        Ok(value @ Value::Object(_)) => Ok(value),
        Ok(_) => Err(invalid("expected a JSON object".to_owned())),
        Err(e) => Err(invalid(format!("not valid JSON: {e}"))),
    }
}

/// A configured generic source, checked.
#[derive(Debug)]
pub(crate) struct Generic {
    events: HashMap<String, Vec<String>>,
    spec: GenericSource,
}

const DEFAULT_EMAIL: &[&str] = &["/email"];

impl Generic {
    pub(crate) fn new(source: &str, spec: &GenericSource, errors: &mut Vec<String>) -> Option<Self> {
        let key = format!("generic.{source}");
        let before = errors.len();
        if spec.events.is_empty() {
            errors.push(format!("{key}.events: maps no event type"));
        }
        let events = spec
            .events
            .iter()
            .map(|(t, targets)| {
                (
                    t.clone(),
                    config::targets(targets, &format!("{key}.events.{t}"), errors),
                )
            })
            .collect();
        let f = &spec.fields;
        let mut all: Vec<(&str, &OneOrMany)> = vec![
            ("event_type", &spec.event_type),
            ("fields.first_name", &f.first_name),
            ("fields.last_name", &f.last_name),
            ("fields.full_name", &f.full_name),
            ("fields.phone", &f.phone),
            ("fields.company", &f.company),
            ("fields.job_title", &f.job_title),
            ("fields.user_id", &f.user_id),
            ("fields.anonymous_id", &f.anonymous_id),
            ("fields.amount_minor", &f.amount_minor),
            ("fields.amount", &f.amount),
            ("fields.currency", &f.currency),
            ("fields.order_id", &f.order_id),
            ("fields.object_id", &f.object_id),
            ("fields.campaign", &f.campaign),
            ("fields.url", &f.url),
        ];
        if let Some(email) = &f.email {
            all.push(("fields.email", email));
        }
        for (name, value) in all {
            config::pointers(value, &format!("{key}.{name}"), errors);
        }
        if let Some(at) = &spec.occurred_at {
            config::pointers(
                &OneOrMany::One(at.pointer.clone()),
                &format!("{key}.occurred_at.pointer"),
                errors,
            );
        }
        if !f.amount.as_slice().is_empty() && !f.amount_minor.as_slice().is_empty() {
            errors.push(format!(
                "{key}.fields: set `amount` (decimal text) or `amount_minor` (integer), not both"
            ));
        }
        if spec.channel.as_deref().is_some_and(|c| c.trim().is_empty()) {
            errors.push(format!("{key}.channel: must not be empty"));
        }
        (errors.len() == before).then(|| Self {
            events,
            spec: spec.clone(),
        })
    }

    fn normalize(&self, raw: &WebhookReceived) -> Result<Vec<Event>, Reject> {
        // The delivery's own type; else the configured pointer into the (readable) body.
        let parsed;
        let (event_type, body) = match &raw.vendor_event_type {
            Some(t) => (t.clone(), None),
            None => {
                parsed = parse(raw, "(no type)").ok();
                let t = parsed
                    .as_ref()
                    .and_then(|b| first_text(b, self.spec.event_type.as_slice()));
                match t {
                    Some(t) => (t, parsed.as_ref()),
                    None => return Ok(Vec::new()),
                }
            }
        };
        let Some(types) = self.events.get(&event_type) else {
            return Ok(Vec::new());
        };
        let owned;
        let body = match body {
            Some(b) => b,
            None => {
                owned = parse(raw, &event_type)?;
                &owned
            }
        };
        let mapped = self.map(body, &event_type).map_err(|e| reject(raw, &event_type, e))?;
        Ok(emit(raw, &event_type, mapped, types))
    }

    fn map(&self, body: &Value, event_type: &str) -> Result<Mapped, FieldError> {
        let f = &self.spec.fields;
        let text = |p: &OneOrMany| first_text(body, p.as_slice());
        let person = Person {
            email: match &f.email {
                Some(p) => text(p),
                None => first_text(body, DEFAULT_EMAIL),
            },
            first_name: text(&f.first_name),
            last_name: text(&f.last_name),
            full_name: text(&f.full_name),
            phone: text(&f.phone),
            company: text(&f.company),
            job_title: text(&f.job_title),
            user_id: text(&f.user_id),
            anonymous_id: text(&f.anonymous_id),
            external_ids: HashMap::new(),
        };
        let money = if f.amount_minor.as_slice().is_empty() {
            rules::read_amount(body, AmountKind::Major, f.amount.as_slice(), f.currency.as_slice())?
        } else {
            rules::read_amount(
                body,
                AmountKind::Minor,
                f.amount_minor.as_slice(),
                f.currency.as_slice(),
            )?
        };
        let currency = match &money {
            Some(m) => Some(m.currency.clone()),
            None => rules::read_currency(body, f.currency.as_slice())?,
        };
        let commerce = Commerce {
            amount_minor: money.map(|m| m.minor),
            currency,
            order_id: text(&f.order_id),
            ..Commerce::default()
        };
        let mut attributes = HashMap::new();
        json::flatten("", body, &mut attributes);
        Ok(Mapped {
            occurred_at: self
                .spec
                .occurred_at
                .as_ref()
                .and_then(|at| body.pointer(&at.pointer).and_then(|v| json::time_millis(v, at.unit))),
            person: (person != Person::default()).then_some(person),
            commerce: (commerce != Commerce::default()).then_some(commerce),
            activity: self.spec.channel.as_ref().map(|channel| Activity {
                channel: channel.trim().to_owned(),
                action: event_type.to_owned(),
                object_id: text(&f.object_id),
                campaign: text(&f.campaign),
                url: text(&f.url),
            }),
            context: None,
            attributes,
        })
    }
}

impl OneOrMany {
    /// The values as a slice, without allocating.
    pub(crate) fn as_slice(&self) -> &[String] {
        match self {
            Self::One(v) => std::slice::from_ref(v),
            Self::Many(v) => v,
        }
    }
}
