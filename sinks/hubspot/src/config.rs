//! `[target]`: where HubSpot is, how to authenticate, and which event fields become which
//! contact (and company) properties. Validation is pure; nothing here talks to HubSpot.

use std::collections::BTreeMap;

use nectar_core::Sensitive;
use nectar_core::config::Validate;
use serde::Deserialize;

use crate::mapping::FieldPath;

/// The connector's configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubspotConfig {
    /// Base URL of HubSpot's API (tests point it at a fake).
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// A private app's access token, sent as `Authorization: Bearer`. Set this or `oauth`.
    #[serde(default)]
    pub access_token: Option<Sensitive<String>>,
    /// A public app installed in the account: the access token is refreshed from these.
    #[serde(default)]
    pub oauth: Option<OAuthConfig>,
    /// Where the upsert key comes from: `|`-separated event fields, the first non-empty wins.
    /// The value is trimmed and lower-cased (HubSpot stores e-mails lower-case).
    #[serde(default = "default_email_from")]
    pub email_from: String,
    /// Contact property ← event field(s). An empty source turns a default mapping off.
    /// `email` is never mapped here: it is the upsert key (`email_from`).
    #[serde(default)]
    pub properties: BTreeMap<String, PropertySource>,
    /// A contact property (which must exist in the account) that receives the id of the
    /// last event written to the contact. Off by default.
    #[serde(default)]
    pub event_id_property: Option<String>,
    /// Also upsert the person's company and associate the contact with it.
    #[serde(default)]
    pub companies: bool,
    /// Where the company key (its domain) comes from.
    #[serde(default = "default_company_domain_from")]
    pub company_domain_from: String,
    /// The company property companies are upserted by: HubSpot only upserts by a property
    /// with unique values, and `domain` is not one, so create a single-line text property
    /// with "unique values" in the account (default name `nectar_company_domain`).
    #[serde(default = "default_company_id_property")]
    pub company_id_property: String,
    /// Company property ← event field(s), as `properties` is for contacts.
    #[serde(default)]
    pub company_properties: BTreeMap<String, PropertySource>,
}

/// OAuth refresh-token credentials of a public app.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuthConfig {
    pub client_id: String,
    pub client_secret: Sensitive<String>,
    pub refresh_token: Sensitive<String>,
    /// HubSpot's token endpoint. Default `<api_url>/oauth/v3/token`.
    #[serde(default)]
    pub token_url: Option<String>,
}

/// Where a property's value comes from.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum PropertySource {
    /// `"person.first_name|enrichment.first_name"`: the first non-empty field.
    Fields(String),
    /// A field whose values are translated (unlisted values are not written), e.g.
    /// `{ from = "score.stage", values = { mql = "marketingqualifiedlead" } }`.
    Mapped(MappedSource),
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappedSource {
    pub from: String,
    pub values: BTreeMap<String, String>,
}

impl PropertySource {
    /// The `|`-separated field list.
    pub fn from(&self) -> &str {
        match self {
            PropertySource::Fields(s) => s,
            PropertySource::Mapped(m) => &m.from,
        }
    }
}

fn default_api_url() -> String {
    "https://api.hubapi.com".into()
}
fn default_email_from() -> String {
    "person.email|enrichment.email_normalized".into()
}
fn default_company_domain_from() -> String {
    "enrichment.company_domain".into()
}
fn default_company_id_property() -> String {
    "nectar_company_domain".into()
}

impl HubspotConfig {
    /// The API base URL without a trailing `/`.
    pub fn api_base(&self) -> &str {
        self.api_url.trim_end_matches('/')
    }

    pub fn token_url(&self) -> Option<String> {
        let oauth = self.oauth.as_ref()?;
        Some(
            oauth
                .token_url
                .clone()
                .unwrap_or_else(|| format!("{}/oauth/v3/token", self.api_base())),
        )
    }
}

/// HubSpot's internal property names: lower-case letters, digits and `_`, starting with a
/// letter.
pub fn valid_property_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn validate_url(key: &str, url: &str, errors: &mut Vec<String>) {
    if !(url.starts_with("https://") || url.starts_with("http://")) || url.len() <= "https://".len() {
        errors.push(format!("{key}: must be an http(s) URL, got `{url}`"));
    }
}

fn validate_fields(key: &str, fields: &str, errors: &mut Vec<String>) {
    if let Err(e) = FieldPath::parse_list(fields) {
        errors.push(format!("{key}: {e}"));
    }
}

fn validate_properties(section: &str, map: &BTreeMap<String, PropertySource>, errors: &mut Vec<String>) {
    for (name, source) in map {
        let key = format!("{section}.{name}");
        if !valid_property_name(name) {
            errors.push(format!(
                "{key}: `{name}` is not a HubSpot property name (lower-case letters, digits, `_`)"
            ));
        }
        if source.from().trim().is_empty() {
            if matches!(source, PropertySource::Mapped(_)) {
                errors.push(format!("{key}.from: must name an event field"));
            }
            continue; // an empty source switches a default mapping off
        }
        validate_fields(&key, source.from(), errors);
    }
}

impl Validate for HubspotConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        validate_url("target.api_url", &self.api_url, errors);
        match (&self.access_token, &self.oauth) {
            (Some(_), Some(_)) => {
                errors.push("target.access_token: set a private-app token or target.oauth, not both".into())
            }
            (None, None) => errors.push(
                "target.access_token: required (a private app's access token), unless target.oauth is set".into(),
            ),
            (Some(token), None) if token.expose().trim().is_empty() => {
                errors.push("target.access_token: must not be empty".into())
            }
            _ => {}
        }
        if let Some(oauth) = &self.oauth {
            if oauth.client_id.trim().is_empty() {
                errors.push("target.oauth.client_id: must not be empty".into());
            }
            if oauth.client_secret.expose().trim().is_empty() {
                errors.push("target.oauth.client_secret: must not be empty".into());
            }
            if oauth.refresh_token.expose().trim().is_empty() {
                errors.push("target.oauth.refresh_token: must not be empty".into());
            }
            if let Some(url) = &oauth.token_url {
                validate_url("target.oauth.token_url", url, errors);
            }
        }
        validate_fields("target.email_from", &self.email_from, errors);
        if self.properties.contains_key("email") {
            errors.push("target.properties.email: the e-mail is the upsert key; set target.email_from instead".into());
        }
        validate_properties("target.properties", &self.properties, errors);
        if let Some(p) = &self.event_id_property
            && !valid_property_name(p)
        {
            errors.push(format!(
                "target.event_id_property: `{p}` is not a HubSpot property name (lower-case letters, digits, `_`)"
            ));
        }
        if self.companies {
            validate_fields("target.company_domain_from", &self.company_domain_from, errors);
            if !valid_property_name(&self.company_id_property) {
                errors.push(format!(
                    "target.company_id_property: `{}` is not a HubSpot property name",
                    self.company_id_property
                ));
            }
            validate_properties("target.company_properties", &self.company_properties, errors);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> Result<HubspotConfig, Vec<String>> {
        use figment::providers::{Format, Toml};
        let config: HubspotConfig = figment::Figment::from(Toml::string(toml))
            .extract()
            .map_err(|e| vec![e.to_string()])?;
        let mut errors = Vec::new();
        config.validate(&mut errors);
        if errors.is_empty() { Ok(config) } else { Err(errors) }
    }

    #[test]
    fn the_shipped_defaults_parse_and_validate_with_a_token() {
        use figment::providers::{Format, Toml};
        let figment = figment::Figment::from(Toml::string(crate::DEFAULTS))
            .merge(figment::providers::Serialized::default("target.access_token", "pat-x"));
        let config: HubspotConfig = figment.extract_inner("target").expect("defaults parse");
        let mut errors = Vec::new();
        config.validate(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config.api_base(), "https://api.hubapi.com");
        assert!(config.properties.contains_key("firstname"));
        assert!(!config.companies);
        assert_eq!(config.event_id_property, None);
    }

    #[test]
    fn credentials_are_required_once() {
        let errors = config("").unwrap_err();
        assert!(
            errors.iter().any(|e| e.starts_with("target.access_token: required")),
            "{errors:?}"
        );
        let errors = config(
            r#"access_token = "pat"
            [oauth]
            client_id = "c"
            client_secret = "s"
            refresh_token = "r""#,
        )
        .unwrap_err();
        assert!(errors.iter().any(|e| e.contains("not both")), "{errors:?}");
        let ok = config(
            r#"api_url = "http://127.0.0.1:1234/"
            [oauth]
            client_id = "c"
            client_secret = "s"
            refresh_token = "r""#,
        )
        .unwrap();
        assert_eq!(ok.token_url().as_deref(), Some("http://127.0.0.1:1234/oauth/v3/token"));
    }

    #[test]
    fn errors_name_their_key() {
        let errors = config(
            r#"access_token = "pat"
            api_url = "ftp://x"
            event_id_property = "Event Id"
            companies = true
            company_id_property = "Domain"
            [properties]
            email = "person.email"
            firstname = "persn.first_name"
            "Last Name" = "person.last_name"
            lifecyclestage = { from = "score.stage", values = { mql = "marketingqualifiedlead" } }
            [company_properties]
            name = "person."
            "#,
        )
        .unwrap_err();
        let expect = [
            "target.api_url:",
            "target.event_id_property:",
            "target.company_id_property:",
            "target.properties.email:",
            "target.properties.firstname:",
            "target.properties.Last Name:",
            "target.company_properties.name:",
        ];
        for prefix in expect {
            assert!(
                errors.iter().any(|e| e.starts_with(prefix)),
                "{prefix} missing in {errors:?}"
            );
        }
        assert!(!errors.iter().any(|e| e.contains("lifecyclestage")), "{errors:?}");
    }

    #[test]
    fn an_empty_source_turns_a_mapping_off() {
        let c = config(
            r#"access_token = "pat"
            [properties]
            phone = """#,
        )
        .unwrap();
        assert_eq!(c.properties["phone"], PropertySource::Fields(String::new()));
    }
}
