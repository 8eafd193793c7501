//! `[target]`: where the cluster is, how to authenticate, and how events become documents.

use std::path::PathBuf;

use nectar_core::Sensitive;
use nectar_core::config::Validate;
use serde::Deserialize;

use crate::index::IndexTemplate;

/// The `[target]` section of `nectar-sink-elasticsearch`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ElasticsearchConfig {
    /// Base URL of the cluster (any node, a load balancer, or a path behind a proxy).
    #[serde(default = "default_url")]
    pub url: String,
    /// Index per event, rendered from its `occurred_at` (UTC) and workspace: `%Y`, `%m`,
    /// `%d`, `%H`, `%%`, `{workspace_id}`. See `index.rs`.
    #[serde(default = "default_index")]
    pub index: String,
    /// Ingest pipeline every document goes through (`?pipeline=`); checked at start.
    #[serde(default)]
    pub pipeline: Option<String>,
    /// Install (or update) the index template at start.
    #[serde(default = "default_true")]
    pub install_template: bool,
    /// The index template's name. Default: `target.index`'s fixed prefix without trailing
    /// punctuation (`nectar-events`).
    #[serde(default)]
    pub template_name: Option<String>,
    /// The template's priority: the highest-priority template matching a new index wins.
    #[serde(default = "default_priority")]
    pub template_priority: u32,
    /// `index.number_of_shards` / `index.number_of_replicas` in the template (unset: the
    /// cluster's defaults).
    #[serde(default)]
    pub number_of_shards: Option<u32>,
    #[serde(default)]
    pub number_of_replicas: Option<u32>,
    /// Basic authentication (Elasticsearch native realm, OpenSearch security plugin).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Sensitive<String>>,
    /// Elasticsearch API key: the `encoded` value the create-API-key call returns
    /// (base64 of `id:api_key`), sent as `Authorization: ApiKey <api_key>`.
    #[serde(default)]
    pub api_key: Option<Sensitive<String>>,
    /// PEM file with the CA certificate(s) to trust instead of the system roots (a cluster
    /// with its own CA).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Most bytes of NDJSON in one `_bulk` request; a delivery larger than this is sent as
    /// several requests.
    #[serde(default = "default_max_bulk_bytes")]
    pub max_bulk_bytes: usize,
    /// Most documents in one delivery call (the runtime splits larger batches).
    #[serde(default = "default_max_bulk_items")]
    pub max_bulk_items: usize,
}

fn default_url() -> String {
    "http://127.0.0.1:9200".into()
}
fn default_index() -> String {
    "nectar-events-%Y.%m.%d".into()
}
fn default_true() -> bool {
    true
}
fn default_priority() -> u32 {
    200
}
fn default_max_bulk_bytes() -> usize {
    5 * 1024 * 1024
}
fn default_max_bulk_items() -> usize {
    1000
}

/// How requests authenticate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Auth {
    None,
    Basic {
        username: String,
        password: Sensitive<String>,
    },
    ApiKey(Sensitive<String>),
}

impl ElasticsearchConfig {
    /// `url` without a trailing `/`, so paths can be appended.
    pub fn base_url(&self) -> String {
        self.url.trim().trim_end_matches('/').to_owned()
    }

    /// The parsed index template (validated, so this only fails on an unvalidated config).
    pub fn index_template(&self) -> Result<IndexTemplate, String> {
        IndexTemplate::parse(&self.index).map_err(|e| format!("target.index: `{}` {e}", self.index))
    }

    /// The index template's name: configured, or derived from the index prefix.
    pub fn template_name(&self) -> String {
        if let Some(name) = &self.template_name {
            return name.clone();
        }
        let prefix = IndexTemplate::parse(&self.index)
            .map(|t| t.prefix().to_owned())
            .unwrap_or_default();
        let name = prefix.trim_end_matches(|c: char| !c.is_ascii_alphanumeric());
        if name.is_empty() {
            "nectar-events".into()
        } else {
            name.to_owned()
        }
    }

    pub fn auth(&self) -> Auth {
        match (&self.username, &self.password, &self.api_key) {
            (_, _, Some(key)) => Auth::ApiKey(key.clone()),
            (Some(user), Some(password), None) => Auth::Basic {
                username: user.clone(),
                password: password.clone(),
            },
            _ => Auth::None,
        }
    }
}

impl Validate for ElasticsearchConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        match reqwest::Url::parse(self.url.trim()) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                if url.query().is_some() {
                    errors.push(format!("target.url: `{}` must not have a query string", self.url));
                }
            }
            Ok(_) => errors.push(format!("target.url: `{}` is not an http(s) URL with a host", self.url)),
            Err(e) => errors.push(format!("target.url: `{}`: {e}", self.url)),
        }
        match IndexTemplate::parse(&self.index) {
            Ok(t) if self.install_template && t.prefix().is_empty() => errors.push(format!(
                "target.index: `{}` must start with fixed text (like `nectar-events-`) so the index \
                 template has a pattern to match; or set target.install_template = false",
                self.index
            )),
            Ok(_) => {}
            Err(e) => errors.push(format!("target.index: `{}` {e}", self.index)),
        }
        if let Some(pipeline) = &self.pipeline
            && (pipeline.trim().is_empty() || pipeline.contains(['/', '?', '#', '&', ' ']))
        {
            errors.push(format!("target.pipeline: `{pipeline}` is not a pipeline id"));
        }
        if let Some(name) = &self.template_name
            && (name.trim().is_empty() || name.contains(['/', '?', '#', '&', ' ', '*']))
        {
            errors.push(format!("target.template_name: `{name}` is not a template name"));
        }
        if self.number_of_shards == Some(0) {
            errors.push("target.number_of_shards: must be at least 1".into());
        }
        match (&self.username, &self.password) {
            (Some(_), None) => errors.push("target.password: required with target.username".into()),
            (None, Some(_)) => errors.push("target.username: required with target.password".into()),
            (Some(user), Some(_)) if user.contains(':') => {
                errors.push("target.username: cannot contain `:` (basic authentication)".into())
            }
            _ => {}
        }
        if self.api_key.is_some() && self.username.is_some() {
            errors.push("target.api_key: set either target.api_key or target.username/password, not both".into());
        }
        if let Some(key) = &self.api_key
            && (key.expose().trim().is_empty() || key.expose().contains(char::is_whitespace))
        {
            errors.push("target.api_key: must be the encoded API key (base64, no spaces)".into());
        }
        if let Some(path) = &self.ca_file
            && !path.is_file()
        {
            errors.push(format!("target.ca_file: {} is not a readable file", path.display()));
        }
        if self.max_bulk_bytes < 1024 {
            errors.push("target.max_bulk_bytes: must be at least 1024".into());
        }
        if self.max_bulk_items == 0 || self.max_bulk_items > 10_000 {
            errors.push("target.max_bulk_items: must be between 1 and 10000".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml: &str) -> ElasticsearchConfig {
        #[derive(Deserialize)]
        struct Wrapper {
            target: ElasticsearchConfig,
        }
        figment::Figment::from(figment::providers::Serialized::defaults(serde_json::json!({})))
            .merge(<figment::providers::Toml as figment::providers::Format>::string(toml))
            .extract::<Wrapper>()
            .expect("parses")
            .target
    }

    fn errors(c: &ElasticsearchConfig) -> Vec<String> {
        let mut errors = Vec::new();
        c.validate(&mut errors);
        errors
    }

    #[test]
    fn defaults_are_valid_and_local() {
        let c = config("[target]");
        assert_eq!(errors(&c), Vec::<String>::new());
        assert_eq!(c.base_url(), "http://127.0.0.1:9200");
        assert_eq!(c.template_name(), "nectar-events");
        assert_eq!(c.auth(), Auth::None);
        assert_eq!(c.max_bulk_bytes, 5 * 1024 * 1024);
        assert_eq!(c.max_bulk_items, 1000);
        assert!(c.install_template);
    }

    #[test]
    fn auth_is_basic_or_api_key() {
        let c = config("[target]\nusername = \"nectar\"\npassword = \"s3cret\"");
        assert!(matches!(c.auth(), Auth::Basic { ref username, .. } if username == "nectar"));
        assert!(!format!("{c:?}").contains("s3cret"), "the password never prints");
        let c = config("[target]\napi_key = \"VnVhQ2ZHY0JDZGJrUW0tZTVhT3g6dWkybHAyYXhUTm1zeWFrdzl0dk5udw==\"");
        assert!(matches!(c.auth(), Auth::ApiKey(_)));
    }

    #[test]
    fn every_error_names_its_key() {
        let c = config(
            r#"[target]
url = "ftp://es"
index = "Events-%Q"
pipeline = "a b"
template_name = "x*"
number_of_shards = 0
username = "u:1"
password = "p"
api_key = "k"
ca_file = "/nonexistent.pem"
max_bulk_bytes = 10
max_bulk_items = 0
"#,
        );
        let errors = errors(&c);
        for key in [
            "target.url",
            "target.index",
            "target.pipeline",
            "target.template_name",
            "target.number_of_shards",
            "target.username",
            "target.api_key",
            "target.ca_file",
            "target.max_bulk_bytes",
            "target.max_bulk_items",
        ] {
            assert!(errors.iter().any(|e| e.starts_with(key)), "{key} in {errors:?}");
        }
        assert!(errors.iter().all(|e| e.starts_with("target.")), "{errors:?}");
    }

    #[test]
    fn an_index_without_a_fixed_prefix_needs_its_own_template() {
        let c = config("[target]\nindex = \"%Y-events\"");
        assert!(errors(&c)[0].contains("fixed text"), "{:?}", errors(&c));
        let c = config("[target]\nindex = \"%Y-events\"\ninstall_template = false");
        assert!(errors(&c).is_empty());
        let c = config("[target]\nindex = \"acme.leads-%Y\"");
        assert_eq!(c.template_name(), "acme.leads");
        let c = config("[target]\nurl = \"http://es:9200/es/\"");
        assert_eq!(c.base_url(), "http://es:9200/es");
    }

    #[test]
    fn a_lone_password_or_unknown_key_is_refused() {
        let c = config("[target]\npassword = \"p\"");
        assert!(errors(&c).iter().any(|e| e.starts_with("target.username")));
        #[derive(Debug, Deserialize)]
        #[allow(dead_code)]
        struct Wrapper {
            target: ElasticsearchConfig,
        }
        let err = <figment::providers::Toml as figment::providers::Format>::string("[target]\nindexx = \"a\"");
        let err = figment::Figment::from(err).extract::<Wrapper>().unwrap_err();
        assert!(err.to_string().contains("indexx"), "{err}");
    }
}
