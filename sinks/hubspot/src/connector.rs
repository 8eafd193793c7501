//! The HubSpot connector: events → contacts upserted by e-mail (`POST
//! /crm/v3/objects/contacts/batch/upsert`), and optionally their companies (`POST
//! /crm/v3/objects/companies/batch/upsert` by a unique company property) associated with
//! them (`POST /crm/v4/associations/contacts/companies/batch/associate/default`).
//!
//! Guarantee: every event on the delivery topic is written to its contact at least once, and
//! writing it again changes nothing, so the contact ends in the state the events describe
//! (the latest event winning per property) — "exactly once" in effect, not in request count.
//! An upsert by e-mail cannot create a second contact for the same address, companies are
//! upserted by a unique key, and the default association is set, not added. A crash between
//! HubSpot's answer and the offset commit makes the runtime send the same events again:
//! HubSpot applies the same values once more. Where this ends: HubSpot's own property
//! history records the repeated write, and a contact edited in HubSpot between the two
//! writes gets the event's values back.

use std::collections::BTreeMap;
use std::time::Duration;

use nectar_sink::http::error_chain;
use nectar_sink::{Connector, Delivery, DeliveryError, ItemResult, StartError};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::answer::{Answer, BatchInputs, Outcome, read_batch};
use crate::config::HubspotConfig;
use crate::mapping::{ContactGroup, Mapper, group};
use nectar_sink::auth::{Auth, AuthError, Grant, TokenSource};

pub const CONTACTS_UPSERT: &str = "/crm/v3/objects/contacts/batch/upsert";
pub const COMPANIES_UPSERT: &str = "/crm/v3/objects/companies/batch/upsert";
pub const ASSOCIATE_DEFAULT: &str = "/crm/v4/associations/contacts/companies/batch/associate/default";
/// The start check: cheap, authenticated, needs only the contacts read scope.
pub const START_CHECK: &str = "/crm/v3/objects/contacts?limit=1";

/// HubSpot's batch endpoints take at most 100 inputs.
pub const MAX_INPUTS: usize = 100;

#[derive(Debug)]
pub struct HubspotConnector {
    base: String,
    http: reqwest::Client,
    auth: Auth,
    mapper: Mapper,
}

/// A call that produced no answer.
#[derive(Debug)]
enum CallError {
    Transport(String),
    Auth(AuthError),
}

impl CallError {
    fn into_delivery(self, request: &str) -> DeliveryError {
        match self {
            CallError::Transport(e) => DeliveryError::retry(format!("{request} failed: {e}")),
            CallError::Auth(AuthError::Unavailable(e)) => DeliveryError::retry(e),
            CallError::Auth(AuthError::Rejected(e)) => DeliveryError::Fatal(format!("credentials rejected: {e}")),
        }
    }

    fn into_start(self, request: &str) -> StartError {
        match self {
            CallError::Transport(e) => StartError::Unreachable(format!("{request}: {e}")),
            CallError::Auth(AuthError::Unavailable(e)) => StartError::Unreachable(e),
            CallError::Auth(AuthError::Rejected(e)) => StartError::Credentials(e),
        }
    }
}

impl HubspotConnector {
    pub fn new(config: &HubspotConfig, request_timeout: Duration) -> anyhow::Result<Self> {
        let http = nectar_sink::http::client(request_timeout)?;
        let mapper = Mapper::new(config).map_err(anyhow::Error::msg)?;
        // A private app's static token, or OAuth: an access token from HubSpot's token
        // endpoint (`grant_type=refresh_token`), cached, refreshed once on a 401.
        let auth = match (&config.oauth, &config.access_token) {
            (Some(o), _) => Auth::OAuth2(Box::new(TokenSource::new(
                config.token_url().unwrap_or_default(),
                Grant::RefreshToken {
                    client_id: o.client_id.clone(),
                    client_secret: o.client_secret.clone(),
                },
                Some(o.refresh_token.clone()),
                http.clone(),
            ))),
            (None, Some(token)) => Auth::Bearer(token.clone()),
            (None, None) => Auth::None,
        };
        Ok(Self {
            base: config.api_base().to_owned(),
            auth,
            http,
            mapper,
        })
    }

    /// One authenticated request; with OAuth, a 401 refreshes the token and tries once more.
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Answer, CallError> {
        let mut refreshed = false;
        loop {
            let request = self
                .http
                .request(method.clone(), format!("{}{path}", self.base))
                .header(reqwest::header::ACCEPT, "application/json");
            let (request, token) = self.auth.apply(request).await.map_err(CallError::Auth)?;
            let answer = self.send(request, body).await?;
            if answer.status == StatusCode::UNAUTHORIZED && self.auth.refreshes() && !refreshed {
                tracing::info!("HubSpot refused the access token; refreshing it once");
                self.auth.refresh(token.as_deref()).await.map_err(CallError::Auth)?;
                refreshed = true;
                continue;
            }
            return Ok(answer);
        }
    }

    async fn send(&self, mut request: reqwest::RequestBuilder, body: Option<&Value>) -> Result<Answer, CallError> {
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| CallError::Transport(error_chain(&e.without_url())))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response
            .text()
            .await
            .map_err(|e| CallError::Transport(error_chain(&e.without_url())))?;
        Ok(Answer { status, headers, body })
    }

    async fn post_batch(&self, path: &str, body: &Value) -> Result<Answer, DeliveryError> {
        let request = format!("POST {path}");
        self.call(Method::POST, path, Some(body))
            .await
            .map_err(|e| e.into_delivery(&request))
    }

    /// `POST …/contacts/batch/upsert` for the groups; one outcome per group.
    async fn upsert_contacts(&self, groups: &[ContactGroup]) -> Result<Vec<Outcome>, DeliveryError> {
        let body = contacts_body(groups);
        let answer = self.post_batch(CONTACTS_UPSERT, &body).await?;
        let inputs = BatchInputs {
            labels: groups.iter().map(|g| format!("contact {}", g.email)).collect(),
            keys: groups
                .iter()
                .map(|g| vec![g.trace_id.to_lowercase(), g.email.clone()])
                .collect(),
        };
        read_batch(
            &answer,
            "contacts batch upsert",
            &inputs,
            |r| result_keys(r, "email"),
            record_id,
        )
    }

    /// Upsert the companies of the written contacts and associate them. Outcomes per group.
    async fn link_companies(
        &self,
        groups: &[ContactGroup],
        contacts: Vec<Outcome>,
    ) -> Result<Vec<ItemResult>, DeliveryError> {
        let mut results: Vec<Option<ItemResult>> = vec![None; groups.len()];
        // Companies by key, with the groups (and their contact ids) that name them.
        let mut companies: BTreeMap<String, CompanyInput> = BTreeMap::new();
        for (g, (group, outcome)) in groups.iter().zip(contacts).enumerate() {
            match (outcome, &group.company) {
                (Outcome::Failed(r), _) => results[g] = Some(r),
                (Outcome::Done(_), None) => results[g] = Some(ItemResult::Delivered),
                (Outcome::Done(None), Some(_)) => {
                    results[g] = Some(ItemResult::retry(format!(
                        "contact {} upserted, but HubSpot's answer did not give its id to associate its company",
                        group.email
                    )))
                }
                (Outcome::Done(Some(contact_id)), Some(company)) => {
                    let entry = companies.entry(company.key.clone()).or_insert_with(|| CompanyInput {
                        properties: BTreeMap::new(),
                        trace_id: String::new(),
                        members: Vec::new(),
                    });
                    entry.properties.extend(company.properties.clone());
                    entry.trace_id = group.trace_id.clone();
                    entry.members.push((g, contact_id));
                }
            }
        }
        if !companies.is_empty() {
            let (id_property, _) = self.mapper.company_properties().unwrap_or_default();
            let keys: Vec<&String> = companies.keys().collect();
            let body = json!({
                "inputs": companies.iter().map(|(key, c)| json!({
                    "idProperty": id_property,
                    "id": key,
                    "properties": c.properties,
                    "objectWriteTraceId": c.trace_id,
                })).collect::<Vec<_>>()
            });
            let answer = self.post_batch(COMPANIES_UPSERT, &body).await?;
            let inputs = BatchInputs {
                labels: keys.iter().map(|k| format!("company {k}")).collect(),
                keys: companies
                    .iter()
                    .map(|(k, c)| vec![c.trace_id.to_lowercase(), k.clone()])
                    .collect(),
            };
            let outcomes = read_batch(
                &answer,
                "companies batch upsert",
                &inputs,
                |r| result_keys(r, &id_property),
                record_id,
            )?;
            // Pairs to associate: (group, contact id, company id).
            let mut pairs: Vec<(usize, String, String)> = Vec::new();
            for ((key, company), outcome) in companies.into_iter().zip(outcomes) {
                for (g, contact_id) in company.members {
                    match &outcome {
                        Outcome::Done(Some(company_id)) => pairs.push((g, contact_id, company_id.clone())),
                        Outcome::Done(None) => {
                            results[g] = Some(ItemResult::retry(format!(
                                "company {key} upserted, but HubSpot's answer did not give its id"
                            )))
                        }
                        Outcome::Failed(r) => {
                            results[g] = Some(ItemResult::prefixed(
                                r.clone(),
                                &format!("contact {} upserted, but ", groups[g].email),
                            ))
                        }
                    }
                }
            }
            if !pairs.is_empty() {
                let body = json!({
                    "inputs": pairs.iter().map(|(_, contact, company)| json!({
                        "from": {"id": contact},
                        "to": {"id": company},
                    })).collect::<Vec<_>>()
                });
                let answer = self.post_batch(ASSOCIATE_DEFAULT, &body).await?;
                let inputs = BatchInputs {
                    labels: pairs
                        .iter()
                        .map(|(g, _, company)| {
                            format!("the association of contact {} with company {company}", groups[*g].email)
                        })
                        .collect(),
                    keys: pairs
                        .iter()
                        .map(|(_, contact, _)| vec![contact.to_lowercase()])
                        .collect(),
                };
                let outcomes = read_batch(
                    &answer,
                    "contact-company association",
                    &inputs,
                    |r| {
                        r.pointer("/from/id")
                            .map(id_string)
                            .into_iter()
                            .flatten()
                            .map(|s| s.to_lowercase())
                            .collect()
                    },
                    |_| None,
                )?;
                for ((g, _, _), outcome) in pairs.into_iter().zip(outcomes) {
                    results[g] = Some(match outcome {
                        Outcome::Done(_) => ItemResult::Delivered,
                        Outcome::Failed(r) => r.prefixed(&format!("contact {} upserted, but ", groups[g].email)),
                    });
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| ItemResult::retry("no answer for this contact")))
            .collect())
    }

    /// Check that every mapped property exists (and, for the company key, has unique values).
    /// Reading property definitions needs the `crm.schemas.*.read` scope: without it the
    /// check is skipped with a warning.
    async fn check_properties(
        &self,
        object: &str,
        wanted: &[(String, String)],
        unique: Option<&str>,
    ) -> Result<(), StartError> {
        let path = format!("/crm/v3/properties/{object}");
        let request = format!("GET {path}");
        let answer = self
            .call(Method::GET, &path, None)
            .await
            .map_err(|e| e.into_start(&request))?;
        if answer.status == StatusCode::FORBIDDEN {
            tracing::warn!(
                "cannot read HubSpot's {object} properties (HTTP 403; the crm.schemas.{object}.read scope is missing): \
                 the mapped properties are not checked at start"
            );
            return Ok(());
        }
        start_status(&answer, &request)?;
        let body: Value = serde_json::from_str(&answer.body)
            .map_err(|e| StartError::Unreachable(format!("{request}: unreadable answer: {e}")))?;
        let defined: BTreeMap<&str, &Value> = body
            .get("results")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|p| Some((p.get("name")?.as_str()?, p))).collect())
            .unwrap_or_default();
        let mut problems = Vec::new();
        for (name, key) in wanted {
            match defined.get(name.as_str()) {
                None => problems.push(format!(
                    "{key}: HubSpot has no {object} property `{name}` (create it under Settings › Properties, or change the mapping)"
                )),
                Some(p) if p.pointer("/modificationMetadata/readOnlyValue") == Some(&Value::Bool(true)) => {
                    problems.push(format!("{key}: the {object} property `{name}` is read-only in HubSpot"))
                }
                Some(p) if unique == Some(name.as_str()) && p.get("hasUniqueValue") != Some(&Value::Bool(true)) => {
                    problems.push(format!(
                        "{key}: the {object} property `{name}` must have unique values (HubSpot upserts only by such a property)"
                    ))
                }
                Some(_) => {}
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(StartError::Config(problems.join("; ")))
        }
    }
}

struct CompanyInput {
    properties: BTreeMap<String, String>,
    trace_id: String,
    members: Vec<(usize, String)>,
}

/// The contacts upsert request: one input per e-mail.
pub fn contacts_body(groups: &[ContactGroup]) -> Value {
    json!({
        "inputs": groups.iter().map(|g| json!({
            "idProperty": "email",
            "id": g.email,
            "properties": g.properties,
            "objectWriteTraceId": g.trace_id,
        })).collect::<Vec<_>>()
    })
}

fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn record_id(r: &Value) -> Option<String> {
    r.get("id").and_then(id_string)
}

/// The keys a `results[]` record is recognised by: its trace id and its key property.
fn result_keys(r: &Value, key_property: &str) -> Vec<String> {
    let mut keys = Vec::new();
    if let Some(t) = r.get("objectWriteTraceId").and_then(Value::as_str) {
        keys.push(t.to_lowercase());
    }
    if let Some(k) = r
        .get("properties")
        .and_then(|p| p.get(key_property))
        .and_then(Value::as_str)
    {
        keys.push(k.trim().to_lowercase());
    }
    keys
}

/// The start check's reading of a status: the one rule every sink shares, with HubSpot's
/// message and category and what to check.
fn start_status(answer: &Answer, request: &str) -> Result<(), StartError> {
    if answer.status.is_success() {
        return Ok(());
    }
    let body: Value = serde_json::from_str(&answer.body).unwrap_or(Value::Null);
    let msg = body
        .get("message")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .unwrap_or_else(|| answer.body.clone());
    let what = match crate::answer::category(&body) {
        Some(category) => format!("HubSpot ({category}, {request})"),
        None => format!("HubSpot ({request})"),
    };
    Err(match nectar_sink::http::start_status(answer.status, &what, &msg) {
        StartError::Credentials(m) => StartError::Credentials(format!(
            "{m} (check target.access_token or target.oauth, and the app's scopes)"
        )),
        StartError::Config(m) if answer.status == StatusCode::NOT_FOUND => {
            StartError::Config(format!("target.api_url: {m}"))
        }
        other => other,
    })
}

impl Connector for HubspotConnector {
    fn name(&self) -> &str {
        "hubspot"
    }

    async fn start(&self) -> Result<(), StartError> {
        let request = format!("GET {START_CHECK}");
        let answer = self
            .call(Method::GET, START_CHECK, None)
            .await
            .map_err(|e| e.into_start(&request))?;
        start_status(&answer, &request)?;
        let event_id_property = self.mapper.event_id_property();
        let wanted: Vec<(String, String)> = self
            .mapper
            .contact_properties()
            .into_iter()
            .map(|name| {
                let key = if Some(name.as_str()) == event_id_property {
                    "target.event_id_property".to_owned()
                } else if name == "email" {
                    "target.email_from".to_owned()
                } else {
                    format!("target.properties.{name}")
                };
                (name, key)
            })
            .collect();
        self.check_properties("contacts", &wanted, None).await?;
        if let Some((id_property, names)) = self.mapper.company_properties() {
            let mut wanted = vec![(id_property.clone(), "target.company_id_property".to_owned())];
            wanted.extend(
                names
                    .into_iter()
                    .filter(|n| *n != id_property)
                    .map(|n| (n.clone(), format!("target.company_properties.{n}"))),
            );
            self.check_properties("companies", &wanted, Some(&id_property)).await?;
        }
        Ok(())
    }

    fn max_items(&self) -> usize {
        MAX_INPUTS
    }

    async fn deliver(&self, delivery: Delivery<'_>) -> Result<Vec<ItemResult>, DeliveryError> {
        let items = delivery.items;
        let mut results: Vec<Option<ItemResult>> = vec![None; items.len()];
        let mut mapped = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let event = match serde_json::to_value(&*item.event) {
                Ok(v) => v,
                Err(e) => {
                    results[i] = Some(ItemResult::reject(
                        format!("cannot read the event: {e}"),
                        "not sent to HubSpot",
                    ));
                    continue;
                }
            };
            match self.mapper.map(item.event_id(), &event) {
                Ok(m) => mapped.push((i, item.event_id().to_owned(), m)),
                Err(reason) => results[i] = Some(ItemResult::reject(reason, "not sent to HubSpot")),
            }
        }
        let groups = group(mapped);
        if !groups.is_empty() {
            let contacts = self.upsert_contacts(&groups).await?;
            let outcomes: Vec<ItemResult> = if self.mapper.company_properties().is_some() {
                self.link_companies(&groups, contacts).await?
            } else {
                contacts
                    .into_iter()
                    .map(|o| match o {
                        Outcome::Done(_) => ItemResult::Delivered,
                        Outcome::Failed(r) => r,
                    })
                    .collect()
            };
            for (group, outcome) in groups.iter().zip(outcomes) {
                for &i in &group.items {
                    results[i] = Some(outcome.clone());
                }
            }
        }
        Ok(results
            .into_iter()
            .map(|r| r.unwrap_or_else(|| ItemResult::retry("no answer for this event")))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use nectar_core::events::{Enrichment, Envelope, Event, Person};
    use nectar_sink::Item;
    use nectar_tests::fakes::hubspot::{ACCESS_TOKEN, EVENT_ID_PROPERTY, FakeHubspot};

    use super::*;
    use crate::config::PropertySource;

    fn config(fake: &FakeHubspot) -> HubspotConfig {
        use figment::providers::{Format, Serialized, Toml};
        figment::Figment::from(Toml::string(crate::DEFAULTS))
            .merge(Serialized::default("target.access_token", ACCESS_TOKEN))
            .merge(Serialized::default("target.api_url", fake.url()))
            .merge(Serialized::default("target.event_id_property", EVENT_ID_PROPERTY))
            .extract_inner("target")
            .unwrap()
    }

    fn item(id: &str, email: Option<&str>, first_name: &str, domain: Option<&str>) -> Item {
        let mut e = Event::new(Envelope {
            event_id: id.into(),
            event_type: "form.submitted".into(),
            occurred_at: 1,
            received_at: 1,
            source: "test".into(),
            workspace_id: "ws".into(),
            lead_key: None,
            trace_parent: None,
            consent: None,
        });
        e.person = Some(Person {
            email: email.map(str::to_owned),
            first_name: Some(first_name.into()),
            company: Some("Engines".into()),
            ..Person::default()
        });
        e.enrichment = domain.map(|d| Enrichment {
            company_domain: Some(d.into()),
            ..Enrichment::default()
        });
        Item {
            topic: "t".into(),
            partition: 0,
            offset: 0,
            key: None,
            value: Vec::new(),
            headers: Vec::new(),
            timestamp: None,
            event: Arc::new(e),
            attempts: 0,
            maybe_delivered: false,
        }
    }

    async fn deliver(c: &HubspotConnector, items: &[Item]) -> Vec<ItemResult> {
        c.deliver(Delivery { items, positions: None }).await.unwrap()
    }

    #[test]
    fn the_upsert_request_is_hubspots_shape() {
        let groups = vec![ContactGroup {
            email: "ada@example.com".into(),
            properties: [("email".to_owned(), "ada@example.com".to_owned())].into(),
            company: None,
            items: vec![0],
            trace_id: "e1".into(),
        }];
        assert_eq!(
            contacts_body(&groups),
            json!({"inputs": [{
                "idProperty": "email", "id": "ada@example.com",
                "properties": {"email": "ada@example.com"}, "objectWriteTraceId": "e1",
            }]})
        );
    }

    #[tokio::test]
    async fn one_call_merges_rejects_and_writes_the_rest() {
        let fake = FakeHubspot::start().await;
        fake.reject_email("bob@example.com");
        let c = HubspotConnector::new(&config(&fake), Duration::from_secs(10)).unwrap();
        c.start().await.unwrap();
        let items = [
            item("e1", Some("ada@example.com"), "Ada", None),
            item("e2", Some("bob@example.com"), "Bob", None),
            item("e3", Some("ADA@example.com"), "Augusta", None),
            item("e4", None, "Nobody", None),
        ];
        let results = deliver(&c, &items).await;
        assert_eq!(results[0], ItemResult::Delivered);
        assert_eq!(results[2], ItemResult::Delivered, "merged with e1, same answer");
        assert!(
            matches!(&results[1], ItemResult::Reject { reason, response } if reason.contains("bob@example.com") && response.contains("INVALID_EMAIL")),
            "{results:?}"
        );
        assert!(matches!(&results[3], ItemResult::Reject { reason, .. } if reason.starts_with("no e-mail")));
        let upserts = fake.requests_to(CONTACTS_UPSERT);
        assert_eq!(upserts.len(), 1);
        assert_eq!(upserts[0].ids, ["ada@example.com", "bob@example.com"]);
        let ada = fake.contact("ada@example.com").unwrap();
        assert_eq!(ada.properties["firstname"], "Augusta");
        assert_eq!(ada.properties[EVENT_ID_PROPERTY], "e3");
    }

    #[tokio::test]
    async fn whole_call_failures_are_errors_not_item_results() {
        let fake = FakeHubspot::start().await;
        let c = HubspotConnector::new(&config(&fake), Duration::from_secs(10)).unwrap();
        let items = [item("e1", Some("ada@example.com"), "Ada", None)];
        fake.rate_limit_next(1, Duration::from_secs(3));
        let err = c
            .deliver(Delivery {
                items: &items,
                positions: None,
            })
            .await
            .unwrap_err();
        assert_eq!(
            err,
            DeliveryError::Retry {
                reason: "rate limited by HubSpot (HTTP 429, policy TEN_SECONDLY_ROLLING): You have reached your ten_secondly_rolling limit.".into(),
                after: Some(Duration::from_secs(3)),
            }
        );
        fake.fail_next(1, 502);
        assert!(matches!(
            c.deliver(Delivery {
                items: &items,
                positions: None
            })
            .await,
            Err(DeliveryError::Retry { .. })
        ));
        fake.revoke_token(ACCESS_TOKEN);
        assert!(matches!(
            c.deliver(Delivery { items: &items, positions: None }).await,
            Err(DeliveryError::Fatal(m)) if m.contains("credentials rejected")
        ));
    }

    #[tokio::test]
    async fn companies_are_upserted_and_associated() {
        let fake = FakeHubspot::start().await;
        let mut config = config(&fake);
        config.companies = true;
        let c = HubspotConnector::new(&config, Duration::from_secs(10)).unwrap();
        c.start().await.unwrap();
        let items = [
            item("e1", Some("ada@example.com"), "Ada", Some("Engines.example")),
            item("e2", Some("bob@example.com"), "Bob", Some("engines.example")),
            item("e3", Some("eve@example.com"), "Eve", None),
        ];
        assert_eq!(deliver(&c, &items).await, vec![ItemResult::Delivered; 3]);
        let companies = fake.companies();
        assert_eq!(companies.len(), 1);
        let company = &companies["engines.example"];
        assert_eq!(company.properties["name"], "Engines");
        let expected: std::collections::BTreeSet<(String, String)> = ["ada@example.com", "bob@example.com"]
            .iter()
            .map(|e| (fake.contact(e).unwrap().id, company.id.clone()))
            .collect();
        assert_eq!(fake.associations(), expected);
    }

    #[tokio::test]
    async fn the_start_check_names_what_is_wrong() {
        let fake = FakeHubspot::start().await;
        let mut cfg = config(&fake);
        cfg.properties
            .insert("nectar_score".into(), PropertySource::Fields("score.value".into()));
        let err = HubspotConnector::new(&cfg, Duration::from_secs(10))
            .unwrap()
            .start()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StartError::Config(m) if m.contains("target.properties.nectar_score")),
            "{err:?}"
        );
        fake.add_contact_property("nectar_score");
        HubspotConnector::new(&cfg, Duration::from_secs(10))
            .unwrap()
            .start()
            .await
            .unwrap();

        let mut cfg = config(&fake);
        cfg.companies = true;
        cfg.company_id_property = "domain".into();
        let err = HubspotConnector::new(&cfg, Duration::from_secs(10))
            .unwrap()
            .start()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StartError::Config(m) if m.contains("unique values")),
            "{err:?}"
        );

        let mut cfg = config(&fake);
        cfg.access_token = Some(nectar_core::Sensitive::new("pat-wrong".into()));
        let err = HubspotConnector::new(&cfg, Duration::from_secs(10))
            .unwrap()
            .start()
            .await
            .unwrap_err();
        assert!(
            matches!(&err, StartError::Credentials(m) if m.contains("401") && m.contains("INVALID_AUTHENTICATION")),
            "{err:?}"
        );
        assert!(err.to_string().starts_with("credentials rejected"));
    }
}
