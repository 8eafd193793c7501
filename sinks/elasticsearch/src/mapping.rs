//! The document an event becomes, and the index template (`PUT _index_template/<name>`) whose
//! mapping fits it.
//!
//! The document is the `io.nectar.Event` as serde writes it (nested objects, times as epoch
//! milliseconds) plus `@timestamp` (= `envelope.occurred_at`) for dashboards. The mapping
//! follows the Event shape field by field (a unit test walks a fully populated event and
//! fails on any field the mapping does not name): ids, e-mails, types and codes are
//! `keyword`; times are `date` in `epoch_millis`; names and titles are `text` with a
//! `keyword` sub-field; amounts and scores are numbers. The free-form string maps
//! (`attributes`, `form.fields`, `person.external_ids`, `enrichment.utm`,
//! `enrichment.external`) get a dynamic template that maps every key as `keyword`, so an
//! attribute value that looks like a number or a date never fixes the field's type for
//! every later event. Each distinct key becomes a field: the cluster's
//! `index.mapping.total_fields.limit` (1000 by default) caps how many keys an index holds.
//!
//! The same body is PUT on every start, so installing it is idempotent; it only applies to
//! indices created after it (today's index keeps the mapping it was created with).

use nectar_core::events::Event;
use serde_json::{Map, Value, json};

use crate::index::IndexTemplate;

/// Longest keyword value indexed (longer values are kept in `_source`, not indexed); well
/// under Lucene's 32 766-byte term limit even for 4-byte UTF-8 characters.
const IGNORE_ABOVE: u32 = 1024;

/// The JSON document for `event`.
pub fn document(event: &Event) -> Result<Value, serde_json::Error> {
    let mut doc = serde_json::to_value(event)?;
    if let Value::Object(map) = &mut doc {
        map.insert("@timestamp".into(), Value::from(event.envelope.occurred_at));
    }
    Ok(doc)
}

/// Index settings the template sets (unset: the cluster's defaults).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TemplateSettings {
    pub number_of_shards: Option<u32>,
    pub number_of_replicas: Option<u32>,
}

/// The body of `PUT _index_template/<name>` for indices named by `index`.
pub fn index_template(index: &IndexTemplate, priority: u32, settings: &TemplateSettings) -> Value {
    let mut index_settings = Map::new();
    if let Some(n) = settings.number_of_shards {
        index_settings.insert("number_of_shards".into(), n.into());
    }
    if let Some(n) = settings.number_of_replicas {
        index_settings.insert("number_of_replicas".into(), n.into());
    }
    let mut template = json!({ "mappings": mappings() });
    if !index_settings.is_empty() {
        template["settings"] = json!({ "index": index_settings });
    }
    json!({
        "index_patterns": [index.pattern()],
        "priority": priority,
        "template": template,
        "_meta": {
            "managed_by": "nectar-sink-elasticsearch",
            "description": "io.nectar.Event documents; rewritten by the sink on every start",
        },
    })
}

/// The mapping of an event document.
pub fn mappings() -> Value {
    let keyword = || json!({ "type": "keyword", "ignore_above": IGNORE_ABOVE });
    let text = || json!({ "type": "text", "fields": { "keyword": { "type": "keyword", "ignore_above": 256 } } });
    let date = || json!({ "type": "date", "format": "epoch_millis" });
    let boolean = || json!({ "type": "boolean" });
    let object = |properties: Value| json!({ "type": "object", "properties": properties });
    // A string map: its keys are mapped by the `string_maps` dynamic template.
    let string_map = || json!({ "type": "object", "dynamic": true });

    let map_paths = [
        "attributes",
        "form.fields",
        "person.external_ids",
        "enrichment.utm",
        "enrichment.external",
    ];
    let dynamic_templates: Vec<Value> = map_paths
        .iter()
        .map(|path| {
            json!({ format!("{}_as_keyword", path.replace('.', "_")): {
                "path_match": format!("{path}.*"),
                "match_mapping_type": "string",
                "mapping": keyword(),
            }})
        })
        .chain(std::iter::once(json!({ "other_strings_as_keyword": {
            "match_mapping_type": "string",
            "mapping": keyword(),
        }})))
        .collect();

    json!({
        // Strings that look like dates or numbers stay strings.
        "date_detection": false,
        "numeric_detection": false,
        "dynamic_templates": dynamic_templates,
        "properties": {
            "@timestamp": date(),
            "envelope": object(json!({
                "event_id": keyword(),
                "event_type": keyword(),
                "occurred_at": date(),
                "received_at": date(),
                "source": keyword(),
                "workspace_id": keyword(),
                "lead_key": keyword(),
                "trace_parent": { "type": "keyword", "index": false },
                "consent": object(json!({
                    "marketing": boolean(),
                    "analytics": boolean(),
                    "personalization": boolean(),
                })),
            })),
            "person": object(json!({
                "email": keyword(),
                "first_name": text(),
                "last_name": text(),
                "full_name": text(),
                "phone": keyword(),
                "company": text(),
                "job_title": text(),
                "user_id": keyword(),
                "anonymous_id": keyword(),
                "external_ids": string_map(),
            })),
            "form": object(json!({
                "form_id": keyword(),
                "form_type": keyword(),
                "fields": string_map(),
            })),
            "commerce": object(json!({
                "amount_minor": { "type": "long" },
                "currency": keyword(),
                "order_id": keyword(),
                "invoice_id": keyword(),
                "subscription_id": keyword(),
                "plan": keyword(),
                "status": keyword(),
            })),
            "activity": object(json!({
                "channel": keyword(),
                "action": keyword(),
                "object_id": keyword(),
                "campaign": keyword(),
                "url": keyword(),
            })),
            "context": object(json!({
                "page_url": keyword(),
                "referrer": keyword(),
                "user_agent": text(),
                // Not `ip`: a malformed address would make the whole document fail.
                "ip": keyword(),
            })),
            "attributes": string_map(),
            "enrichment": object(json!({
                "email_normalized": keyword(),
                "email_valid": boolean(),
                "email_domain": keyword(),
                "free_mail": boolean(),
                "disposable": boolean(),
                "company_domain": keyword(),
                "first_name": text(),
                "last_name": text(),
                "phone_e164": keyword(),
                "utm": string_map(),
                "referrer_domain": keyword(),
                "browser": keyword(),
                "os": keyword(),
                "device_type": keyword(),
                "country": keyword(),
                "region": keyword(),
                "city": keyword(),
                "external": string_map(),
            })),
            "score": object(json!({
                "value": { "type": "double" },
                "delta": { "type": "double" },
                "stage": keyword(),
                "crossed": keyword(),
            })),
        },
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use nectar_core::events::*;

    use super::*;

    fn full_event() -> Event {
        let map = || HashMap::from([("k".to_owned(), "v".to_owned())]);
        let mut event = Event::new(Envelope {
            event_id: "0190b6a0-0000-7000-8000-000000000001".into(),
            event_type: "form.submitted".into(),
            occurred_at: 1_700_000_000_000,
            received_at: 1_700_000_000_123,
            source: "form:contact".into(),
            workspace_id: "acme".into(),
            lead_key: Some("abc".into()),
            trace_parent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
            consent: Some(Consent {
                marketing: Some(true),
                analytics: Some(false),
                personalization: Some(true),
            }),
        });
        let s = || Some("x".to_owned());
        event.person = Some(Person {
            email: s(),
            first_name: s(),
            last_name: s(),
            full_name: s(),
            phone: s(),
            company: s(),
            job_title: s(),
            user_id: s(),
            anonymous_id: s(),
            external_ids: map(),
        });
        event.form = Some(FormInfo {
            form_id: "contact".into(),
            form_type: s(),
            fields: map(),
        });
        event.commerce = Some(Commerce {
            amount_minor: Some(1200),
            currency: s(),
            order_id: s(),
            invoice_id: s(),
            subscription_id: s(),
            plan: s(),
            status: s(),
        });
        event.activity = Some(Activity {
            channel: "email".into(),
            action: "open".into(),
            object_id: s(),
            campaign: s(),
            url: s(),
        });
        event.context = Some(Context {
            page_url: s(),
            referrer: s(),
            user_agent: s(),
            ip: s(),
        });
        event.attributes = map();
        event.enrichment = Some(Enrichment {
            email_normalized: s(),
            email_valid: Some(true),
            email_domain: s(),
            free_mail: Some(false),
            disposable: Some(false),
            company_domain: s(),
            first_name: s(),
            last_name: s(),
            phone_e164: s(),
            utm: map(),
            referrer_domain: s(),
            browser: s(),
            os: s(),
            device_type: s(),
            country: s(),
            region: s(),
            city: s(),
            external: map(),
        });
        event.score = Some(LeadScore {
            value: 42.5,
            delta: 2.0,
            stage: "mql".into(),
            crossed: s(),
        });
        event
    }

    /// Every leaf of `doc` has a mapping in `properties`, of a type that accepts its value;
    /// the keys of string maps are left to the dynamic templates.
    fn check(doc: &Map<String, Value>, properties: &Map<String, Value>, path: &str, missing: &mut Vec<String>) {
        for (key, value) in doc {
            let here = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            let Some(mapping) = properties.get(key) else {
                missing.push(here);
                continue;
            };
            let ty = mapping.get("type").and_then(Value::as_str).unwrap_or("object");
            match value {
                Value::Object(inner) if mapping.get("dynamic") == Some(&Value::Bool(true)) => {
                    assert!(inner.values().all(Value::is_string), "{here} is a string map");
                }
                Value::Object(inner) => {
                    assert_eq!(ty, "object", "{here}");
                    check(inner, mapping["properties"].as_object().unwrap(), &here, missing);
                }
                Value::String(_) => assert!(["keyword", "text"].contains(&ty), "{here}: {ty}"),
                Value::Bool(_) => assert_eq!(ty, "boolean", "{here}"),
                Value::Number(n) if n.is_f64() => assert_eq!(ty, "double", "{here}"),
                Value::Number(_) => assert!(["long", "date", "double"].contains(&ty), "{here}: {ty}"),
                Value::Null | Value::Array(_) => panic!("{here}: a full event has no {value}"),
            }
        }
    }

    #[test]
    fn mapping_names_every_field_of_the_event() {
        let doc = document(&full_event()).unwrap();
        let mappings = mappings();
        let mut missing = Vec::new();
        check(
            doc.as_object().unwrap(),
            mappings["properties"].as_object().unwrap(),
            "",
            &mut missing,
        );
        assert!(missing.is_empty(), "fields without a mapping: {missing:?}");
    }

    #[test]
    fn document_is_the_event_plus_timestamp() {
        let event = full_event();
        let doc = document(&event).unwrap();
        assert_eq!(doc["@timestamp"], json!(1_700_000_000_000_i64));
        assert_eq!(doc["envelope"]["event_id"], json!(event.envelope.event_id));
        assert_eq!(doc["attributes"]["k"], json!("v"));
        let mut back = doc.clone();
        back.as_object_mut().unwrap().remove("@timestamp");
        assert_eq!(serde_json::from_value::<Event>(back).unwrap(), event);
    }

    #[test]
    fn template_matches_the_index_pattern_and_sets_settings() {
        let index = IndexTemplate::parse("nectar-events-%Y.%m.%d").unwrap();
        let body = index_template(
            &index,
            200,
            &TemplateSettings {
                number_of_shards: Some(1),
                number_of_replicas: Some(0),
            },
        );
        assert_eq!(body["index_patterns"], json!(["nectar-events-*"]));
        assert_eq!(body["priority"], json!(200));
        assert_eq!(body["template"]["settings"]["index"]["number_of_replicas"], json!(0));
        assert_eq!(
            body["template"]["mappings"]["properties"]["envelope"]["properties"]["occurred_at"],
            json!({ "type": "date", "format": "epoch_millis" })
        );
        let templates = body["template"]["mappings"]["dynamic_templates"].as_array().unwrap();
        assert!(
            templates
                .iter()
                .any(|t| t["attributes_as_keyword"]["path_match"] == "attributes.*")
        );
        assert!(
            templates
                .iter()
                .any(|t| t["enrichment_utm_as_keyword"]["path_match"] == "enrichment.utm.*")
        );
        let defaults = index_template(&index, 200, &TemplateSettings::default());
        assert!(defaults["template"].get("settings").is_none());
    }
}
