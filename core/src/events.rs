//! Rust types for the Avro records in `schemas/avro/`. Field names and order follow the
//! `.avsc` files; the codec checks every value against the schema when it encodes it, and a
//! round-trip test in this module keeps the two in step.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

/// Kafka header carrying the event id, so tools can find an event without decoding it.
pub const EVENT_ID_HEADER: &str = "nectar-event-id";

/// Kafka header of a raw record saying whether its event id can recur: [`ID_DERIVED`] (from a
/// vendor's delivery id or a producer's `Idempotency-Key`, so a retry carries the same id) or
/// [`ID_GENERATED`] (a fresh UUIDv7, which no retry can repeat). normalize remembers only ids
/// that can recur; a raw record without the header counts as derived.
pub const EVENT_ID_ORIGIN_HEADER: &str = "nectar-event-id-origin";
pub const ID_DERIVED: &str = "derived";
pub const ID_GENERATED: &str = "generated";

/// `io.nectar.Envelope`: what every event carries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    pub event_id: String,
    pub event_type: String,
    /// Milliseconds since the Unix epoch.
    pub occurred_at: i64,
    /// Milliseconds since the Unix epoch.
    pub received_at: i64,
    pub source: String,
    pub workspace_id: String,
    pub lead_key: Option<String>,
    pub trace_parent: Option<String>,
    pub consent: Option<Consent>,
}

/// `io.nectar.Consent`. `None` means the question was not asked.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Consent {
    pub marketing: Option<bool>,
    pub analytics: Option<bool>,
    pub personalization: Option<bool>,
}

/// `io.nectar.raw.FormSubmitted` on `nectar.raw.forms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FormSubmitted {
    pub envelope: Envelope,
    pub form_id: String,
    pub form_type: Option<String>,
    pub email: Option<String>,
    pub fields: HashMap<String, String>,
    pub page_url: Option<String>,
    pub referrer: Option<String>,
    pub user_agent: Option<String>,
    pub client_ip: Option<String>,
    pub anonymous_id: Option<String>,
}

/// `io.nectar.raw.WebhookReceived` on `nectar.raw.webhooks`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookReceived {
    pub envelope: Envelope,
    pub vendor: String,
    pub vendor_event_type: Option<String>,
    pub vendor_event_id: Option<String>,
    pub verified: bool,
    pub content_type: Option<String>,
    #[serde(with = "apache_avro::serde::bytes")]
    pub body: Vec<u8>,
    pub headers: HashMap<String, String>,
}

/// `io.nectar.raw.AppEvent` on `nectar.raw.apps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AppEvent {
    pub envelope: Envelope,
    pub producer: String,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub email: Option<String>,
    pub properties_json: String,
}

/// `io.nectar.Event`: the canonical event every stage after normalize reads and writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub envelope: Envelope,
    pub person: Option<Person>,
    pub form: Option<FormInfo>,
    pub commerce: Option<Commerce>,
    pub activity: Option<Activity>,
    pub context: Option<Context>,
    pub attributes: HashMap<String, String>,
    pub enrichment: Option<Enrichment>,
    pub score: Option<LeadScore>,
}

impl Event {
    /// An event with only its envelope set.
    pub fn new(envelope: Envelope) -> Self {
        Self {
            envelope,
            person: None,
            form: None,
            commerce: None,
            activity: None,
            context: None,
            attributes: HashMap::new(),
            enrichment: None,
            score: None,
        }
    }

    pub fn is_erasure(&self) -> bool {
        self.envelope.event_type == ERASURE
    }

    /// The lead the event belongs to: its workspace and (non-blank) lead key.
    pub fn lead(&self) -> Option<Lead> {
        let lead_key = self.envelope.lead_key.as_deref().filter(|k| !k.trim().is_empty())?;
        Some(Lead {
            workspace_id: self.envelope.workspace_id.clone(),
            lead_key: lead_key.to_owned(),
        })
    }

    /// The lead an erasure request asks to erase, or why it names none.
    pub fn lead_to_erase(&self) -> Result<Lead, String> {
        self.lead()
            .ok_or_else(|| format!("{ERASURE} without envelope.lead_key: nothing says which lead to erase"))
    }

    /// What a sink keeps of an erasure request: its envelope, without the personal data the
    /// request may carry (the person to erase, a form).
    pub fn erasure_record(&self) -> Event {
        Event::new(self.envelope.clone())
    }
}

/// The canonical type of GDPR erasure requests: the route processor sends every one to each
/// of `route.erasure_sinks`, score forgets the lead, the storing sinks delete it.
pub const ERASURE: &str = "lead.erasure_requested";

/// A lead as erasure requests name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lead {
    pub workspace_id: String,
    pub lead_key: String,
}

/// `io.nectar.Person`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Person {
    pub email: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub full_name: Option<String>,
    pub phone: Option<String>,
    pub company: Option<String>,
    pub job_title: Option<String>,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub external_ids: HashMap<String, String>,
}

/// `io.nectar.FormInfo`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FormInfo {
    pub form_id: String,
    pub form_type: Option<String>,
    pub fields: HashMap<String, String>,
}

/// `io.nectar.Commerce`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Commerce {
    pub amount_minor: Option<i64>,
    pub currency: Option<String>,
    pub order_id: Option<String>,
    pub invoice_id: Option<String>,
    pub subscription_id: Option<String>,
    pub plan: Option<String>,
    pub status: Option<String>,
}

/// `io.nectar.Activity`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Activity {
    pub channel: String,
    pub action: String,
    pub object_id: Option<String>,
    pub campaign: Option<String>,
    pub url: Option<String>,
}

/// `io.nectar.Context`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Context {
    pub page_url: Option<String>,
    pub referrer: Option<String>,
    pub user_agent: Option<String>,
    pub ip: Option<String>,
}

/// `io.nectar.Enrichment`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Enrichment {
    pub email_normalized: Option<String>,
    pub email_valid: Option<bool>,
    pub email_domain: Option<String>,
    pub free_mail: Option<bool>,
    pub disposable: Option<bool>,
    pub company_domain: Option<String>,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub phone_e164: Option<String>,
    pub utm: HashMap<String, String>,
    pub referrer_domain: Option<String>,
    pub browser: Option<String>,
    pub os: Option<String>,
    pub device_type: Option<String>,
    pub country: Option<String>,
    pub region: Option<String>,
    pub city: Option<String>,
    pub external: HashMap<String, String>,
}

/// `io.nectar.LeadScore`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeadScore {
    pub value: f64,
    pub delta: f64,
    pub stage: String,
    pub crossed: Option<String>,
}

/// `io.nectar.LeadState`: one lead's score state on the compacted changelog.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LeadState {
    pub lead_key: String,
    pub workspace_id: String,
    pub value: f64,
    pub as_of: i64,
    pub stage: String,
    pub facts: Vec<String>,
    pub events: i64,
    /// Ids of the lead's most recent applied events, newest last (score applies an event once).
    #[serde(default)]
    pub recent_event_ids: Vec<String>,
}

/// `io.nectar.SeenEvent`: an event id normalize has passed on, on its de-duplication changelog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeenEvent {
    pub received_at: i64,
}

/// Milliseconds since the Unix epoch, now.
pub fn now_millis() -> i64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(now.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema;
    #[allow(deprecated)]
    use apache_avro::{from_avro_datum, to_avro_datum, to_value};

    fn envelope() -> Envelope {
        Envelope {
            event_id: "0190-test".into(),
            event_type: "form.submitted".into(),
            occurred_at: 1_700_000_000_000,
            received_at: 1_700_000_000_123,
            source: "form:contact".into(),
            workspace_id: "acme".into(),
            lead_key: Some("abc".into()),
            trace_parent: None,
            consent: Some(Consent {
                marketing: Some(true),
                ..Consent::default()
            }),
        }
    }

    // The datum helpers are deprecated for a builder API; they are the plainest way to
    // check a value against a schema in a test.
    #[allow(deprecated)]
    fn round_trip<T>(schema: &schema::EventSchema, item: &T) -> T
    where
        T: Serialize + for<'de> Deserialize<'de>,
    {
        let avro = schema.schema();
        let value = to_value(item).expect("to value");
        let bytes = to_avro_datum(&avro, value).expect("fits the schema");
        let back = from_avro_datum(&avro, &mut bytes.as_slice(), None).expect("decodes");
        apache_avro::from_value(&back).expect("back to Rust")
    }

    #[test]
    fn rust_types_match_the_avsc_files() {
        let form = FormSubmitted {
            envelope: envelope(),
            form_id: "contact".into(),
            form_type: Some("contact".into()),
            email: Some("ada@example.com".into()),
            fields: HashMap::from([("name".into(), "Ada".into())]),
            page_url: None,
            referrer: None,
            user_agent: Some("curl".into()),
            client_ip: None,
            anonymous_id: None,
        };
        assert_eq!(round_trip(&schema::FORM_SUBMITTED, &form), form);

        let hook = WebhookReceived {
            envelope: envelope(),
            vendor: "stripe".into(),
            vendor_event_type: Some("invoice.paid".into()),
            vendor_event_id: Some("evt_1".into()),
            verified: true,
            content_type: Some("application/json".into()),
            body: b"{\"id\":\"evt_1\"}".to_vec(),
            headers: HashMap::new(),
        };
        assert_eq!(round_trip(&schema::WEBHOOK_RECEIVED, &hook), hook);

        let app = AppEvent {
            envelope: envelope(),
            producer: "crm".into(),
            user_id: Some("u1".into()),
            anonymous_id: None,
            email: None,
            properties_json: "{}".into(),
        };
        assert_eq!(round_trip(&schema::APP_EVENT, &app), app);

        let mut event = Event::new(envelope());
        event.person = Some(Person {
            email: Some("ada@example.com".into()),
            ..Person::default()
        });
        event.commerce = Some(Commerce {
            amount_minor: Some(1200),
            currency: Some("EUR".into()),
            ..Commerce::default()
        });
        event.activity = Some(Activity {
            channel: "email".into(),
            action: "opened".into(),
            ..Activity::default()
        });
        event.enrichment = Some(Enrichment {
            free_mail: Some(false),
            ..Enrichment::default()
        });
        event.score = Some(LeadScore {
            value: 42.5,
            delta: 10.0,
            stage: "lead".into(),
            crossed: None,
        });
        assert_eq!(round_trip(&schema::EVENT, &event), event);

        let state = LeadState {
            lead_key: "k".into(),
            workspace_id: "acme".into(),
            value: 12.5,
            as_of: 1,
            stage: "lead".into(),
            facts: vec!["business_email".into()],
            events: 3,
            recent_event_ids: vec!["e1".into(), "e2".into()],
        };
        assert_eq!(round_trip(&schema::LEAD_STATE, &state), state);
        let seen = SeenEvent { received_at: 7 };
        assert_eq!(round_trip(&schema::SEEN_EVENT, &seen), seen);
    }
}
