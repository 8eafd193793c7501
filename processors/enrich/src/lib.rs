//! `nectar-enrich`: derives facts about a lead from its canonical event and writes them into
//! the event's `enrichment` section.
//!
//! Every fact is derived locally (e-mail syntax and domain lists, name splitting, libphonenumber,
//! URL parsing, the uap-core user-agent rules, an optional MaxMind database), except `external`,
//! which comes from an optional HTTP API behind a cache. Nothing here fails an event: a fact that
//! cannot be derived stays `None` (or its map stays empty), and API errors are logged.
//!
//! Inputs come from `event.person` (e-mail, names, phone) and `event.context` (page URL,
//! referrer, user agent, IP), with `event.form.fields` as the fallback for each (field names
//! are matched case-insensitively, with `-`, `.` and spaces read as `_`).

mod agent;
mod email;
mod external;
mod geo;
#[cfg(test)]
mod mmdb_writer;
mod names;
mod phone;
mod web;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::PathBuf;

use nectar_core::Sensitive;
use nectar_core::events::{Enrichment, Event};
use serde::Deserialize;

/// The `[enrich]` section of the service configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrichConfig {
    /// Path to a MaxMind GeoIP2/GeoLite2 City (or Country) `.mmdb`; `None` = no geo.
    #[serde(default)]
    pub geoip_database: Option<PathBuf>,
    /// ISO 3166-1 alpha-2 region for phone numbers written without `+CC`, e.g. `US`.
    #[serde(default)]
    pub default_phone_region: Option<String>,
    /// Free-mail domains on top of the built-in list (exact domains).
    #[serde(default)]
    pub extra_free_mail_domains: Vec<String>,
    /// Disposable domains on top of the built-in list (subdomains match too).
    #[serde(default)]
    pub extra_disposable_domains: Vec<String>,
    /// The optional external enrichment API; off when absent.
    #[serde(default)]
    pub external: Option<ExternalApiConfig>,
}

/// An HTTP API that returns JSON facts about a company domain (or a person's e-mail).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExternalApiConfig {
    /// URL template with `{domain}` (the company domain) or `{email}` (the normalized address),
    /// e.g. `https://api.example.com/v1/companies/{domain}`. The value is percent-encoded.
    pub url: String,
    /// Sent as `Authorization: Bearer <token>`.
    #[serde(default)]
    pub bearer_token: Option<Sensitive<String>>,
    /// Whole-request timeout (connect, send, read the body).
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// How long an answer is reused for the same domain (or e-mail).
    #[serde(default = "default_cache_ttl_secs")]
    pub cache_ttl_secs: u64,
    /// Most answers kept in the cache.
    #[serde(default = "default_cache_capacity")]
    pub cache_capacity: u64,
    /// Output name (key in `enrichment.external`) -> JSON pointer (RFC 6901) into the response,
    /// e.g. `industry = "/category/industry"`. Strings are kept as they are, numbers and
    /// booleans as text, arrays and objects as compact JSON; missing or null values are skipped.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
}

fn default_timeout_ms() -> u64 {
    2000
}

fn default_cache_ttl_secs() -> u64 {
    86_400
}

fn default_cache_capacity() -> u64 {
    100_000
}

/// Derives [`Enrichment`] facts. Cheap to share: build one per service and put it in an `Arc`.
pub struct Enricher {
    domains: email::DomainLists,
    phone_region: Option<phonenumber::country::Id>,
    agents: &'static agent::AgentParser,
    /// Parsed user agents by their text: a handful of browser builds make most traffic, and
    /// matching the uap-core rules was a third of enrich's CPU (perf). Emptied when full.
    agent_cache: std::sync::Mutex<std::collections::HashMap<String, agent::Agent>>,
    geo: Option<geo::Geo>,
    external: Option<external::External>,
}

/// Most user agents [`Enricher`] remembers (a few MiB at most).
const AGENT_CACHE_ENTRIES: usize = 4096;

impl fmt::Debug for Enricher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Enricher")
            .field("domains", &self.domains)
            .field("phone_region", &self.phone_region)
            .field("geo", &self.geo)
            .field("external", &self.external)
            .finish_non_exhaustive()
    }
}

impl Enricher {
    /// Opens the GeoIP database (the error names the path), builds the domain sets, the
    /// user-agent rules and the external API client. Errors describe the offending setting.
    pub fn new(config: &EnrichConfig) -> Result<Self, String> {
        let phone_region = match config.default_phone_region.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(region) => Some(phone::region(region)?),
        };
        let domains = email::DomainLists::new(&config.extra_free_mail_domains, &config.extra_disposable_domains);
        let agents = agent::AgentParser::get()?;
        let geo = config.geoip_database.as_deref().map(geo::Geo::open).transpose()?;
        let external = config
            .external
            .as_ref()
            .map(external::External::new)
            .transpose()
            .map_err(|e| format!("external: {e}"))?;
        Ok(Self {
            domains,
            phone_region,
            agents,
            agent_cache: std::sync::Mutex::default(),
            geo,
            external,
        })
    }

    /// What user agent `ua` says, from the cache if it was seen before.
    fn agent(&self, ua: &str) -> agent::Agent {
        let mut cache = self.agent_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(agent) = cache.get(ua) {
            return agent.clone();
        }
        let agent = self.agents.parse(ua);
        if cache.len() >= AGENT_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(ua.to_owned(), agent.clone());
        agent
    }

    /// Fill `event.enrichment` from the event's person/context/form fields. Never fails: a
    /// fact that cannot be derived stays `None`. Replaces any enrichment the event carried, so
    /// the same input always gives the same local facts.
    pub async fn enrich(&self, event: &mut Event) {
        let mut enrichment = self.derive(event);
        if let Some(api) = &self.external {
            enrichment.external = api.lookup(&enrichment).await;
        }
        event.enrichment = Some(enrichment);
    }

    /// Every fact but `external`: synchronous, no I/O.
    fn derive(&self, event: &Event) -> Enrichment {
        let person = event.person.as_ref();
        let context = event.context.as_ref();
        let fields = event.form.as_ref().map(|f| &f.fields);
        let mut e = Enrichment::default();

        if let Some(raw) = text(person.and_then(|p| p.email.as_deref())).or_else(|| field(fields, EMAIL_FIELDS)) {
            let normalized = email::normalize(raw);
            if !normalized.is_empty() {
                e.email_valid = Some(email::is_valid(&normalized));
                e.email_domain = email::domain(&normalized);
                if let Some(domain) = &e.email_domain {
                    e.free_mail = Some(self.domains.is_free(domain));
                    e.disposable = Some(self.domains.is_disposable(domain));
                }
                e.email_normalized = Some(normalized);
            }
        }

        let business_email = e.email_valid == Some(true) && e.free_mail == Some(false) && e.disposable == Some(false);
        e.company_domain = if business_email { e.email_domain.clone() } else { None }.or_else(|| {
            field(fields, WEBSITE_FIELDS)
                .and_then(web::website_domain)
                .filter(|d| !self.domains.is_free(d) && !self.domains.is_disposable(d) && !web::is_social(d))
        });

        let (split_first, split_last) = text(person.and_then(|p| p.full_name.as_deref()))
            .or_else(|| field(fields, FULL_NAME_FIELDS))
            .map(names::split_full_name)
            .unwrap_or_default();
        e.first_name = text(person.and_then(|p| p.first_name.as_deref()))
            .or_else(|| field(fields, FIRST_NAME_FIELDS))
            .map(names::clean)
            .or(split_first);
        e.last_name = text(person.and_then(|p| p.last_name.as_deref()))
            .or_else(|| field(fields, LAST_NAME_FIELDS))
            .map(names::clean)
            .or(split_last);

        e.phone_e164 = text(person.and_then(|p| p.phone.as_deref()))
            .or_else(|| field(fields, PHONE_FIELDS))
            .and_then(|raw| phone::e164(raw, self.phone_region));

        let page_url = text(context.and_then(|c| c.page_url.as_deref())).or_else(|| field(fields, PAGE_URL_FIELDS));
        e.utm = web::utm(page_url, |key| field(fields, &[key]));

        e.referrer_domain = text(context.and_then(|c| c.referrer.as_deref()))
            .or_else(|| field(fields, REFERRER_FIELDS))
            .and_then(web::referrer_domain);

        if let Some(ua) =
            text(context.and_then(|c| c.user_agent.as_deref())).or_else(|| field(fields, USER_AGENT_FIELDS))
        {
            let agent = self.agent(ua);
            e.browser = agent.browser;
            e.os = agent.os;
            e.device_type = Some(agent.device_type.to_owned());
        }

        if let Some(geo) = &self.geo {
            let ip = text(context.and_then(|c| c.ip.as_deref())).or_else(|| field(fields, IP_FIELDS));
            if let Some(location) = ip.and_then(geo::parse_ip).and_then(|ip| geo.lookup(ip)) {
                e.country = location.country;
                e.region = location.region;
                e.city = location.city;
            }
        }
        e
    }
}

const EMAIL_FIELDS: &[&str] = &["email", "email_address", "e_mail", "work_email", "business_email"];
const FIRST_NAME_FIELDS: &[&str] = &["first_name", "firstname", "fname", "given_name"];
const LAST_NAME_FIELDS: &[&str] = &["last_name", "lastname", "lname", "surname", "family_name"];
const FULL_NAME_FIELDS: &[&str] = &["full_name", "fullname", "name", "your_name", "contact_name"];
const PHONE_FIELDS: &[&str] = &["phone", "phone_number", "mobile", "mobile_phone", "telephone", "tel"];
const WEBSITE_FIELDS: &[&str] = &[
    "company_website",
    "website",
    "company_url",
    "website_url",
    "company_domain",
    "domain",
];
const PAGE_URL_FIELDS: &[&str] = &["page_url", "landing_page", "page"];
const REFERRER_FIELDS: &[&str] = &["referrer", "referer", "document_referrer"];
const USER_AGENT_FIELDS: &[&str] = &["user_agent"];
const IP_FIELDS: &[&str] = &["ip", "ip_address", "client_ip"];

/// A trimmed, non-empty value.
fn text(value: Option<&str>) -> Option<&str> {
    value.map(str::trim).filter(|v| !v.is_empty())
}

/// The first of `names` present in the form fields with a non-empty value, names compared
/// after lower-casing and reading `-`, `.` and spaces as `_`.
fn field<'a>(fields: Option<&'a HashMap<String, String>>, names: &[&str]) -> Option<&'a str> {
    let fields = fields?;
    names.iter().find_map(|name| {
        // The exact name first, so the answer does not depend on the map's order.
        text(fields.get(*name).map(String::as_str)).or_else(|| {
            fields
                .iter()
                .filter(|(key, _)| field_key_is(key, name))
                .find_map(|(_, value)| text(Some(value)))
        })
    })
}

fn field_key_is(key: &str, name: &str) -> bool {
    let key = key.trim();
    key.len() == name.len()
        && key.chars().zip(name.chars()).all(|(k, n)| {
            let k = match k {
                '-' | '.' | ' ' => '_',
                k => k.to_ascii_lowercase(),
            };
            k == n
        })
}

#[cfg(test)]
mod tests;
