//! The optional external enrichment API: one GET per company domain (or e-mail), JSON back,
//! configured fields picked out by JSON pointer. Answers are cached in a `moka` future cache
//! (TTL and capacity from the config); concurrent lookups of one key share one request.
//! A 404 is an answer (nothing known) and is cached; timeouts, connection errors and other
//! statuses are logged, leave `external` empty and are not cached, so the next event retries.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;
use nectar_core::Sensitive;
use nectar_core::events::Enrichment;
use reqwest::StatusCode;
use serde_json::Value;
use url::form_urlencoded;

use crate::ExternalApiConfig;

type Facts = Arc<HashMap<String, String>>;

const MAX_CACHE_TTL_SECS: u64 = 10 * 365 * 86_400;

/// What the URL template is filled with, and what the cache is keyed by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Key {
    /// `{domain}`: the company domain (never a free-mail or disposable one).
    Domain,
    /// `{email}`: the normalized address of a valid, non-disposable e-mail.
    Email,
}

pub(crate) struct External {
    client: reqwest::Client,
    template: String,
    key: Key,
    bearer_token: Option<Sensitive<String>>,
    fields: BTreeMap<String, String>,
    cache: Cache<String, Facts>,
}

impl fmt::Debug for External {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("External")
            .field("template", &self.template)
            .field("key", &self.key)
            .field("bearer_token", &self.bearer_token)
            .field("fields", &self.fields)
            .field("cached", &self.cache.entry_count())
            .finish()
    }
}

impl External {
    pub(crate) fn new(config: &ExternalApiConfig) -> Result<Self, String> {
        let template = config.url.trim().to_owned();
        let key = if template.contains("{email}") {
            Key::Email
        } else if template.contains("{domain}") {
            Key::Domain
        } else {
            return Err(format!("url {template:?} has neither {{domain}} nor {{email}}"));
        };
        let sample = fill(&template, "example.com", "someone@example.com");
        match url::Url::parse(&sample) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => return Err(format!("url {template:?}: scheme {} is not http or https", u.scheme())),
            Err(e) => return Err(format!("url {template:?}: {e}")),
        }
        if config.timeout_ms == 0 {
            return Err("timeout_ms must be positive".into());
        }
        // moka refuses (panics on) a TTL over 1000 years.
        if config.cache_ttl_secs > MAX_CACHE_TTL_SECS {
            return Err(format!(
                "cache_ttl_secs must be at most {MAX_CACHE_TTL_SECS} (10 years)"
            ));
        }
        if config.fields.is_empty() {
            return Err("fields is empty: nothing from the response would be kept".into());
        }
        if let Some((name, pointer)) = config.fields.iter().find(|(_, p)| !p.is_empty() && !p.starts_with('/')) {
            return Err(format!(
                "fields.{name}: {pointer:?} is not a JSON pointer (it starts with /)"
            ));
        }
        let timeout = Duration::from_millis(config.timeout_ms);
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .user_agent(concat!("nectar-enrich/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let cache = Cache::builder()
            .max_capacity(config.cache_capacity)
            .time_to_live(Duration::from_secs(config.cache_ttl_secs))
            .build();
        Ok(Self {
            client,
            template,
            key,
            bearer_token: config.bearer_token.clone(),
            fields: config.fields.clone(),
            cache,
        })
    }

    /// The API's facts for this lead; empty when there is nothing to look up or the call failed.
    pub(crate) async fn lookup(&self, e: &Enrichment) -> HashMap<String, String> {
        let (key, domain) = match self.key {
            Key::Domain => match &e.company_domain {
                Some(domain) => (domain.clone(), domain.clone()),
                None => return HashMap::new(),
            },
            Key::Email => match (&e.email_normalized, &e.email_domain) {
                (Some(email), Some(domain)) if e.email_valid == Some(true) && e.disposable != Some(true) => {
                    (email.clone(), domain.clone())
                }
                _ => return HashMap::new(),
            },
        };
        let url = fill(&self.template, &domain, &key);
        match self.cache.try_get_with(key, self.fetch(url)).await {
            Ok(facts) => facts.as_ref().clone(),
            Err(error) => {
                // The domain, never the address: logs are not the place for personal data.
                tracing::warn!(%domain, %error, "external enrichment failed; `external` left empty");
                HashMap::new()
            }
        }
    }

    async fn fetch(&self, url: String) -> Result<Facts, String> {
        let mut request = self.client.get(url).header(reqwest::header::ACCEPT, "application/json");
        if let Some(token) = &self.bearer_token {
            request = request.bearer_auth(token.expose());
        }
        let response = request.send().await.map_err(describe)?;
        if response.status() == StatusCode::NOT_FOUND {
            return Ok(Facts::default());
        }
        let response = response.error_for_status().map_err(describe)?;
        let body: Value = response.json().await.map_err(describe)?;
        Ok(Arc::new(pick(&body, &self.fields)))
    }
}

/// reqwest's errors name the URL, which may hold an e-mail address: keep only the kind.
fn describe(error: reqwest::Error) -> String {
    let kind = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "connection failed"
    } else if error.is_decode() {
        "response is not JSON"
    } else if let Some(status) = error.status() {
        return format!("status {status}");
    } else {
        "request failed"
    };
    kind.to_owned()
}

fn fill(template: &str, domain: &str, email: &str) -> String {
    let encode = |v: &str| form_urlencoded::byte_serialize(v.as_bytes()).collect::<String>();
    template
        .replace("{domain}", &encode(domain))
        .replace("{email}", &encode(email))
}

/// The configured fields of the response: strings as they are, numbers and booleans as text,
/// arrays and objects as compact JSON; missing, null and empty values skipped.
fn pick(body: &Value, fields: &BTreeMap<String, String>) -> HashMap<String, String> {
    fields
        .iter()
        .filter_map(|(name, pointer)| {
            let value = match body.pointer(pointer)? {
                Value::Null => return None,
                Value::String(s) => s.trim().to_owned(),
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                other => other.to_string(),
            };
            (!value.is_empty()).then(|| (name.clone(), value))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> ExternalApiConfig {
        ExternalApiConfig {
            url: url.into(),
            bearer_token: None,
            timeout_ms: 2000,
            cache_ttl_secs: 60,
            cache_capacity: 10,
            fields: BTreeMap::from([("name".into(), "/name".into())]),
        }
    }

    #[test]
    fn templates_are_checked() {
        assert!(External::new(&config("https://api.example.com/companies/{domain}")).is_ok());
        assert!(External::new(&config("https://api.example.com/people?email={email}")).is_ok());
        assert!(
            External::new(&config("https://api.example.com/companies"))
                .unwrap_err()
                .contains("{domain}")
        );
        assert!(
            External::new(&config("ftp://api.example.com/{domain}"))
                .unwrap_err()
                .contains("scheme")
        );
        assert!(External::new(&config("not a url {domain}")).is_err());
        let mut bad_pointer = config("https://api.example.com/{domain}");
        bad_pointer.fields.insert("industry".into(), "category.industry".into());
        assert!(External::new(&bad_pointer).unwrap_err().contains("fields.industry"));
        let mut forever = config("https://api.example.com/{domain}");
        forever.cache_ttl_secs = u64::MAX;
        assert!(External::new(&forever).unwrap_err().contains("cache_ttl_secs"));
        let mut no_fields = config("https://api.example.com/{domain}");
        no_fields.fields.clear();
        assert!(External::new(&no_fields).unwrap_err().contains("fields"));
    }

    #[test]
    fn values_are_percent_encoded() {
        assert_eq!(
            fill(
                "https://api.example.com/p?email={email}&d={domain}",
                "acme.com",
                "ada+news@acme.com"
            ),
            "https://api.example.com/p?email=ada%2Bnews%40acme.com&d=acme.com"
        );
    }

    #[test]
    fn fields_are_picked_by_pointer() {
        let body = serde_json::json!({
            "name": " Acme Inc ",
            "metrics": {"employees": 250, "public": false},
            "tags": ["saas", "crm"],
            "logo": null,
            "empty": ""
        });
        let fields = BTreeMap::from([
            ("company_name".to_owned(), "/name".to_owned()),
            ("employees".to_owned(), "/metrics/employees".to_owned()),
            ("public".to_owned(), "/metrics/public".to_owned()),
            ("tags".to_owned(), "/tags".to_owned()),
            ("logo".to_owned(), "/logo".to_owned()),
            ("empty".to_owned(), "/empty".to_owned()),
            ("missing".to_owned(), "/nope".to_owned()),
        ]);
        let picked = pick(&body, &fields);
        assert_eq!(picked.get("company_name").map(String::as_str), Some("Acme Inc"));
        assert_eq!(picked.get("employees").map(String::as_str), Some("250"));
        assert_eq!(picked.get("public").map(String::as_str), Some("false"));
        assert_eq!(picked.get("tags").map(String::as_str), Some(r#"["saas","crm"]"#));
        assert_eq!(picked.len(), 4);
    }
}
