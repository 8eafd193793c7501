//! The ingest service's configuration: `default.toml` compiled in, then the file given with
//! `--config` (or `NECTAR_CONFIG`), then `NECTAR_*__*` environment variables.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use nectar_core::Sensitive;
use nectar_core::config::{AdminConfig, KafkaConfig, LogConfig, RawTopics, RegistryConfig, Validate};
use serde::Deserialize;

use crate::webhooks::WebhookSource;

/// The defaults every deployment starts from.
pub const DEFAULTS: &str = include_str!("../default.toml");

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceConfig {
    pub kafka: KafkaConfig,
    pub schema_registry: RegistryConfig,
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub topics: RawTopics,
    pub ingest: IngestConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Where the public API listens.
    pub listen: SocketAddr,
    /// Workspace for forms and webhooks that do not name one.
    pub default_workspace_id: String,
    /// The externally visible base URL (e.g. `https://hooks.example.com`), used where a vendor
    /// signs the full URL (HubSpot v3). Without it the URL is rebuilt from `Host` and
    /// `X-Forwarded-Proto`.
    #[serde(default)]
    pub public_base_url: Option<String>,
    /// Requests taking longer than this are answered 503 (the event may still be written; the
    /// client's retry is deduplicated by event id).
    pub request_timeout_ms: u64,
    /// Take the client address from `X-Forwarded-For` (only behind a proxy you trust).
    pub trust_forwarded_for: bool,
    /// How often the readiness probes check Kafka and the registry.
    pub probe_interval_ms: u64,
    /// On SIGTERM, report not ready and keep answering requests this long before closing the
    /// listener, so a load balancer (a Kubernetes Service's endpoints) stops sending new
    /// connections first. 0 stops at once. Must stay well under the termination grace period.
    pub shutdown_drain_ms: u64,
    pub forms: FormsConfig,
    pub events: EventsConfig,
    pub webhooks: WebhooksConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormsConfig {
    /// Origins allowed to post forms from a browser (CORS). Empty: any origin.
    pub allowed_origins: Vec<String>,
    /// A field real people never fill in; a submission that fills it is answered 202 and
    /// dropped.
    pub honeypot_field: String,
    pub max_body_bytes: usize,
    /// Per client address.
    pub rate_limit_per_minute: u32,
    pub rate_limit_burst: u32,
    /// Accept forms not listed under `definitions` (into `default_workspace_id`).
    pub accept_unknown_forms: bool,
    #[serde(default)]
    pub definitions: BTreeMap<String, FormDefinition>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FormDefinition {
    #[serde(default)]
    pub workspace_id: Option<String>,
    /// e.g. contact, demo_request, newsletter, signup.
    #[serde(default)]
    pub form_type: Option<String>,
    /// Fields that must be present and non-empty.
    #[serde(default)]
    pub required_fields: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsConfig {
    pub max_body_bytes: usize,
    /// Most events in one batch request.
    pub max_batch: usize,
    /// Producer API keys. Only the SHA-256 of each key is stored.
    #[serde(default)]
    pub api_keys: Vec<ApiKey>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// Recorded as the events' `producer`.
    pub name: String,
    pub workspace_id: String,
    /// Hex SHA-256 of the key (`printf %s "$KEY" | sha256sum`).
    pub sha256: Sensitive<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhooksConfig {
    pub max_body_bytes: usize,
    #[serde(default)]
    pub sources: BTreeMap<String, WebhookSource>,
}

impl Validate for ServiceConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        self.kafka.validate(errors);
        self.schema_registry.validate(errors);
        self.log.validate(errors);
        let ingest = &self.ingest;
        if ingest.default_workspace_id.trim().is_empty() {
            errors.push("ingest.default_workspace_id: must not be empty".into());
        }
        if let Some(url) = &ingest.public_base_url
            && !(url.starts_with("http://") || url.starts_with("https://"))
        {
            errors.push(format!("ingest.public_base_url: `{url}` is not an http(s) URL"));
        }
        if ingest.forms.rate_limit_per_minute == 0 || ingest.forms.rate_limit_burst == 0 {
            errors.push("ingest.forms.rate_limit_per_minute and rate_limit_burst: must be at least 1".into());
        }
        if ingest.shutdown_drain_ms > 60_000 {
            errors.push("ingest.shutdown_drain_ms: must be at most 60000 (the drain delays every stop)".into());
        }
        if !(1..=1000).contains(&ingest.events.max_batch) {
            errors.push("ingest.events.max_batch: must be between 1 and 1000".into());
        }
        for (i, key) in ingest.events.api_keys.iter().enumerate() {
            let hash = key.sha256.expose();
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                errors.push(format!(
                    "ingest.events.api_keys[{i}].sha256: must be 64 hex digits (the SHA-256 of the key)"
                ));
            }
            if key.name.trim().is_empty() {
                errors.push(format!("ingest.events.api_keys[{i}].name: must not be empty"));
            }
        }
        for (name, source) in &ingest.webhooks.sources {
            source.validate(&format!("ingest.webhooks.sources.{name}"), name, errors);
        }
        for (key, limit) in [
            ("ingest.forms.max_body_bytes", ingest.forms.max_body_bytes),
            ("ingest.events.max_body_bytes", ingest.events.max_body_bytes),
            ("ingest.webhooks.max_body_bytes", ingest.webhooks.max_body_bytes),
        ] {
            if limit == 0 {
                errors.push(format!("{key}: must be greater than 0"));
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    fn jail(test: impl FnOnce(&mut figment::Jail) -> figment::Result<()>) {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            test(jail)
        });
    }

    #[test]
    fn the_sample_local_config_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/local/ingest.toml");
        jail(|_| {
            let config: ServiceConfig = nectar_core::config::load(DEFAULTS, Some(&path)).map_err(|e| e.to_string())?;
            assert!(config.ingest.webhooks.sources.contains_key("stripe"));
            Ok(())
        });
    }

    #[test]
    fn webhook_secrets_come_from_the_environment_and_never_print() {
        jail(|jail| {
            jail.set_env(
                "NECTAR_INGEST__WEBHOOKS__SOURCES__STRIPE__SECRETS",
                r#"["whsec_from_env", "whsec_old"]"#,
            );
            let config: ServiceConfig = nectar_core::config::load(DEFAULTS, None).map_err(|e| e.to_string())?;
            let stripe = &config.ingest.webhooks.sources["stripe"];
            let secrets: Vec<&str> = stripe.secrets.iter().map(|s| s.expose().as_str()).collect();
            assert_eq!(secrets, ["whsec_from_env", "whsec_old"]);
            assert!(!format!("{config:?}").contains("whsec_from_env"));
            Ok(())
        });
    }

    #[test]
    fn a_source_without_secret_or_preset_is_refused_with_its_key() {
        jail(|jail| {
            jail.set_env("NECTAR_INGEST__WEBHOOKS__SOURCES__ACME__WORKSPACE_ID", "acme");
            let err = nectar_core::config::load::<ServiceConfig>(DEFAULTS, None).expect_err("invalid");
            let text = err.to_string();
            assert!(text.contains("ingest.webhooks.sources.acme"), "{text}");
            assert!(text.contains("secrets"), "{text}");
            Ok(())
        });
    }
}
