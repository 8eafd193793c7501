//! From events to HubSpot inputs: which contact (by e-mail) an event updates, with which
//! property values, and which company it names.
//!
//! Fields are addressed by their path in the event's JSON form (`io.nectar.Event` as
//! serialized): `person.first_name`, `envelope.event_type`, `envelope.occurred_at`,
//! `score.value`, `enrichment.utm.utm_source`, `attributes.plan`, `form.fields.message`.
//! `a|b` takes the first of `a`, `b` that is present and not blank. Numbers are written as
//! decimal strings (timestamps stay epoch milliseconds, which HubSpot's date-time properties
//! accept), booleans as `true`/`false`.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::{HubspotConfig, PropertySource};

/// The top-level fields of `io.nectar.Event`.
const ROOTS: &[&str] = &[
    "envelope",
    "person",
    "form",
    "commerce",
    "activity",
    "context",
    "attributes",
    "enrichment",
    "score",
];

/// One dotted path into the event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    pub fn parse(path: &str) -> Result<Self, String> {
        let segments: Vec<String> = path.trim().split('.').map(str::to_owned).collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(format!("`{path}` is not a field path like `person.first_name`"));
        }
        if !ROOTS.contains(&segments[0].as_str()) {
            return Err(format!(
                "`{path}`: unknown event field (fields start with {})",
                ROOTS.iter().map(|r| format!("`{r}.`")).collect::<Vec<_>>().join(", ")
            ));
        }
        if segments.len() < 2 {
            return Err(format!("`{path}`: name a field inside `{}`", segments[0]));
        }
        Ok(Self(segments))
    }

    /// `a|b|c` → its paths.
    pub fn parse_list(list: &str) -> Result<Vec<Self>, String> {
        list.split('|').map(Self::parse).collect()
    }

    fn lookup<'a>(&self, event: &'a Value) -> Option<&'a Value> {
        self.0.iter().try_fold(event, |v, segment| v.get(segment))
    }
}

/// The first present, non-blank value among `paths`, as HubSpot wants it: a string.
pub fn first_value(event: &Value, paths: &[FieldPath]) -> Option<String> {
    paths.iter().find_map(|p| p.lookup(event).and_then(as_property_value))
}

fn as_property_value(value: &Value) -> Option<String> {
    match value {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(match n.as_f64() {
            Some(f) if f.fract() == 0.0 && f.abs() < 1e15 => format!("{}", f as i64),
            _ => n.to_string(),
        }),
        _ => None,
    }
}

/// One mapped property: its name, the fields it is read from, and its value translation.
type PropertyEntry = (String, Vec<FieldPath>, Option<BTreeMap<String, String>>);

/// A property mapping, parsed once.
#[derive(Debug, Clone)]
pub struct PropertyMap(Vec<PropertyEntry>);

impl PropertyMap {
    /// Entries with an empty source are switched off. Paths were checked by validation.
    pub fn new(map: &BTreeMap<String, PropertySource>) -> Result<Self, String> {
        let mut entries = Vec::new();
        for (name, source) in map {
            if source.from().trim().is_empty() {
                continue;
            }
            let paths = FieldPath::parse_list(source.from()).map_err(|e| format!("{name}: {e}"))?;
            let values = match source {
                PropertySource::Fields(_) => None,
                PropertySource::Mapped(m) => Some(m.values.clone()),
            };
            entries.push((name.clone(), paths, values));
        }
        Ok(Self(entries))
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|(n, _, _)| n.as_str())
    }

    /// The properties `event` sets.
    pub fn apply(&self, event: &Value) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (name, paths, values) in &self.0 {
            let Some(value) = first_value(event, paths) else {
                continue;
            };
            let value = match values {
                None => Some(value),
                Some(table) => table.get(&value).cloned(),
            };
            if let Some(v) = value {
                out.insert(name.clone(), v);
            }
        }
        out
    }
}

/// Everything the connector derives from the configuration to map events.
#[derive(Debug, Clone)]
pub struct Mapper {
    email: Vec<FieldPath>,
    contact: PropertyMap,
    event_id_property: Option<String>,
    company: Option<CompanyMapper>,
}

#[derive(Debug, Clone)]
struct CompanyMapper {
    domain: Vec<FieldPath>,
    id_property: String,
    properties: PropertyMap,
}

/// What one event contributes.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapped {
    /// Normalized e-mail: the contact's upsert key.
    pub email: String,
    pub properties: BTreeMap<String, String>,
    pub company: Option<CompanyRef>,
}

/// The company an event names: its key (normalized domain) and properties.
#[derive(Debug, Clone, PartialEq)]
pub struct CompanyRef {
    pub key: String,
    pub properties: BTreeMap<String, String>,
}

impl Mapper {
    pub fn new(config: &HubspotConfig) -> Result<Self, String> {
        let company = if config.companies {
            Some(CompanyMapper {
                domain: FieldPath::parse_list(&config.company_domain_from)
                    .map_err(|e| format!("target.company_domain_from: {e}"))?,
                id_property: config.company_id_property.clone(),
                properties: PropertyMap::new(&config.company_properties)
                    .map_err(|e| format!("target.company_properties.{e}"))?,
            })
        } else {
            None
        };
        Ok(Self {
            email: FieldPath::parse_list(&config.email_from).map_err(|e| format!("target.email_from: {e}"))?,
            contact: PropertyMap::new(&config.properties).map_err(|e| format!("target.properties.{e}"))?,
            event_id_property: config.event_id_property.clone(),
            company,
        })
    }

    /// Contact properties the mapping writes (for the start check), `email` included.
    pub fn contact_properties(&self) -> Vec<String> {
        let mut names: Vec<String> = std::iter::once("email")
            .chain(self.contact.names())
            .chain(self.event_id_property.as_deref())
            .map(str::to_owned)
            .collect();
        names.sort();
        names.dedup();
        names
    }

    pub fn event_id_property(&self) -> Option<&str> {
        self.event_id_property.as_deref()
    }

    /// Company properties the mapping writes, the id property first.
    pub fn company_properties(&self) -> Option<(String, Vec<String>)> {
        let c = self.company.as_ref()?;
        Some((c.id_property.clone(), c.properties.names().map(str::to_owned).collect()))
    }

    /// Map one event. `Err` names why it cannot become a HubSpot contact.
    pub fn map(&self, event_id: &str, event: &Value) -> Result<Mapped, String> {
        let email = first_value(event, &self.email)
            .map(|e| e.to_lowercase())
            .ok_or_else(|| "no e-mail: HubSpot upserts contacts by e-mail".to_owned())?;
        let mut properties = self.contact.apply(event);
        properties.insert("email".into(), email.clone());
        if let Some(p) = &self.event_id_property {
            properties.insert(p.clone(), event_id.to_owned());
        }
        let company = self.company.as_ref().and_then(|c| {
            let key = first_value(event, &c.domain)?.to_lowercase();
            let mut properties = c.properties.apply(event);
            properties.insert(c.id_property.clone(), key.clone());
            Some(CompanyRef { key, properties })
        });
        Ok(Mapped {
            email,
            properties,
            company,
        })
    }
}

/// Events for one e-mail merged into one input: HubSpot refuses a batch that names the same
/// contact twice ("Duplicate IDs found in batch input"), so the connector writes their
/// union, the later event winning property by property, and answers the same for all.
#[derive(Debug, Clone, PartialEq)]
pub struct ContactGroup {
    pub email: String,
    pub properties: BTreeMap<String, String>,
    pub company: Option<CompanyRef>,
    /// Indexes (into the delivery's items) of the events merged here, in order.
    pub items: Vec<usize>,
    /// `objectWriteTraceId`: the last merged event's id, so HubSpot's per-record answer
    /// names the input (made unique within the request if two groups share it).
    pub trace_id: String,
}

/// Group mapped events by e-mail, keeping first-seen order.
pub fn group(mapped: Vec<(usize, String, Mapped)>) -> Vec<ContactGroup> {
    let mut groups: Vec<ContactGroup> = Vec::new();
    let mut by_email: BTreeMap<String, usize> = BTreeMap::new();
    for (index, event_id, m) in mapped {
        match by_email.get(&m.email) {
            Some(&g) => {
                let group = &mut groups[g];
                group.properties.extend(m.properties);
                group.company = match (group.company.take(), m.company) {
                    (Some(mut old), Some(new)) if old.key == new.key => {
                        old.properties.extend(new.properties);
                        Some(old)
                    }
                    (old, new) => new.or(old),
                };
                group.items.push(index);
                group.trace_id = event_id;
            }
            None => {
                by_email.insert(m.email.clone(), groups.len());
                groups.push(ContactGroup {
                    email: m.email,
                    properties: m.properties,
                    company: m.company,
                    items: vec![index],
                    trace_id: event_id,
                });
            }
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, g) in groups.iter_mut().enumerate() {
        if !seen.insert(g.trace_id.clone()) {
            g.trace_id = format!("{}#{i}", g.trace_id);
            seen.insert(g.trace_id.clone());
        }
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::MappedSource;
    use nectar_core::events::{Enrichment, Envelope, Event, LeadScore, Person};
    use std::collections::HashMap;

    pub(crate) fn event(id: &str, email: Option<&str>) -> Event {
        let mut e = Event::new(Envelope {
            event_id: id.into(),
            event_type: "form.submitted".into(),
            occurred_at: 1_700_000_000_000,
            received_at: 1_700_000_000_100,
            source: "form:contact".into(),
            workspace_id: "acme".into(),
            lead_key: None,
            trace_parent: None,
            consent: None,
        });
        e.person = Some(Person {
            email: email.map(str::to_owned),
            first_name: Some("Ada".into()),
            last_name: Some("Lovelace".into()),
            company: Some("Analytical Engines".into()),
            ..Person::default()
        });
        e.enrichment = Some(Enrichment {
            company_domain: Some("Engines.example".into()),
            phone_e164: Some("+441234567890".into()),
            utm: HashMap::from([("utm_source".into(), "newsletter".into())]),
            ..Enrichment::default()
        });
        e.score = Some(LeadScore {
            value: 42.0,
            delta: 2.5,
            stage: "mql".into(),
            crossed: None,
        });
        e
    }

    fn config() -> HubspotConfig {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(crate::DEFAULTS))
            .merge(figment::providers::Serialized::default("target.access_token", "pat"))
            .extract_inner("target")
            .unwrap()
    }

    fn json(e: &Event) -> Value {
        serde_json::to_value(e).unwrap()
    }

    #[test]
    fn paths_are_checked() {
        assert!(FieldPath::parse("person.first_name").is_ok());
        assert!(FieldPath::parse("enrichment.utm.utm_source").is_ok());
        assert!(
            FieldPath::parse("persn.first_name")
                .unwrap_err()
                .contains("unknown event field")
        );
        assert!(FieldPath::parse("person").is_err());
        assert!(FieldPath::parse("person..email").is_err());
        assert_eq!(
            FieldPath::parse_list("person.email|enrichment.email_normalized")
                .unwrap()
                .len(),
            2
        );
    }

    #[test]
    fn values_become_strings() {
        let e = json(&event("e1", Some("ada@example.com")));
        let one = |p: &str| first_value(&e, &FieldPath::parse_list(p).unwrap());
        assert_eq!(one("score.value").as_deref(), Some("42"));
        assert_eq!(one("score.delta").as_deref(), Some("2.5"));
        assert_eq!(one("envelope.occurred_at").as_deref(), Some("1700000000000"));
        assert_eq!(one("enrichment.utm.utm_source").as_deref(), Some("newsletter"));
        assert_eq!(
            one("person.phone|enrichment.phone_e164").as_deref(),
            Some("+441234567890")
        );
        assert_eq!(one("person.job_title"), None);
        assert_eq!(one("attributes.missing"), None);
    }

    #[test]
    fn the_default_mapping_writes_standard_properties_only() {
        let mapper = Mapper::new(&config()).unwrap();
        let m = mapper
            .map("e1", &json(&event("e1", Some(" Ada@Example.COM "))))
            .unwrap();
        assert_eq!(m.email, "ada@example.com");
        let expected: BTreeMap<String, String> = [
            ("email", "ada@example.com"),
            ("firstname", "Ada"),
            ("lastname", "Lovelace"),
            ("company", "Analytical Engines"),
            ("phone", "+441234567890"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(m.properties, expected);
        assert_eq!(m.company, None, "companies are off by default");
    }

    #[test]
    fn an_event_without_email_is_refused_with_the_reason() {
        let mapper = Mapper::new(&config()).unwrap();
        let err = mapper.map("e1", &json(&event("e1", None))).unwrap_err();
        assert_eq!(err, "no e-mail: HubSpot upserts contacts by e-mail");
    }

    #[test]
    fn custom_properties_event_id_and_companies_are_opt_in() {
        let mut c = config();
        c.event_id_property = Some("nectar_event_id".into());
        c.companies = true;
        c.properties
            .insert("nectar_score".into(), PropertySource::Fields("score.value".into()));
        c.properties.insert(
            "lifecyclestage".into(),
            PropertySource::Mapped(MappedSource {
                from: "score.stage".into(),
                values: [("mql".to_owned(), "marketingqualifiedlead".to_owned())].into(),
            }),
        );
        c.properties
            .insert("phone".into(), PropertySource::Fields(String::new()));
        let mapper = Mapper::new(&c).unwrap();
        let m = mapper.map("e1", &json(&event("e1", Some("ada@example.com")))).unwrap();
        assert_eq!(m.properties["nectar_event_id"], "e1");
        assert_eq!(m.properties["nectar_score"], "42");
        assert_eq!(m.properties["lifecyclestage"], "marketingqualifiedlead");
        assert!(!m.properties.contains_key("phone"), "switched off");
        let company = m.company.unwrap();
        assert_eq!(company.key, "engines.example");
        assert_eq!(company.properties["nectar_company_domain"], "engines.example");
        assert_eq!(company.properties["domain"], "Engines.example", "as the event has it");
        assert_eq!(company.properties["name"], "Analytical Engines");
        assert!(mapper.contact_properties().contains(&"nectar_event_id".to_owned()));
    }

    #[test]
    fn same_email_events_merge_later_wins_per_property() {
        let mapper = Mapper::new(&config()).unwrap();
        let first = event("e1", Some("ada@example.com"));
        let mut second = event("e2", Some("ADA@example.com"));
        second.person.as_mut().unwrap().first_name = Some("Augusta".into());
        second.person.as_mut().unwrap().company = None;
        let other = event("e3", Some("bob@example.com"));
        let mapped = vec![
            (0, "e1".to_owned(), mapper.map("e1", &json(&first)).unwrap()),
            (1, "e3".to_owned(), mapper.map("e3", &json(&other)).unwrap()),
            (2, "e2".to_owned(), mapper.map("e2", &json(&second)).unwrap()),
        ];
        let groups = group(mapped);
        assert_eq!(groups.len(), 2);
        let ada = &groups[0];
        assert_eq!(ada.items, vec![0, 2]);
        assert_eq!(ada.trace_id, "e2");
        assert_eq!(ada.properties["firstname"], "Augusta", "the later event wins");
        assert_eq!(
            ada.properties["company"], "Analytical Engines",
            "kept: the later one has none"
        );
        assert_eq!(groups[1].items, vec![1]);
    }

    #[test]
    fn trace_ids_are_unique_within_a_request() {
        let mapper = Mapper::new(&config()).unwrap();
        let a = mapper
            .map("same", &json(&event("same", Some("a@example.com"))))
            .unwrap();
        let b = mapper
            .map("same", &json(&event("same", Some("b@example.com"))))
            .unwrap();
        let groups = group(vec![(0, "same".into(), a), (1, "same".into(), b)]);
        assert_ne!(groups[0].trace_id, groups[1].trace_id);
    }
}
