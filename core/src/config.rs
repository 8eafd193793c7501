//! Configuration: embedded defaults, then a TOML file, then `NECTAR_*` environment variables.
//!
//! Environment keys use `__` between levels: `NECTAR_KAFKA__BOOTSTRAP_SERVERS` sets
//! `kafka.bootstrap_servers`. Only variables containing `__` are read as configuration, so
//! `NECTAR_CONFIG` (the file path) and the local stack's own variables never collide with it.
//! Every section denies unknown fields, so a typo is an error that names the key, not a
//! silently ignored setting. Secrets are wrapped in [`Sensitive`], which never prints.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::Figment;
use figment::providers::{Env, Format, Toml};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize, Serializer};

/// A secret: deserializes like `T`, but `Debug`, `Display` and `Serialize` print `***`.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Sensitive<T>(T);

impl<T> Sensitive<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }
    /// The secret itself. Call sites that use it are the ones to audit.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> fmt::Display for Sensitive<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl<T> Serialize for Sensitive<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

/// The Kafka connection shared by every service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` list.
    pub bootstrap_servers: String,
    /// `PLAINTEXT`, `SSL`, `SASL_PLAINTEXT` or `SASL_SSL`.
    #[serde(default = "default_security_protocol")]
    pub security_protocol: String,
    /// `PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512` (with a SASL protocol).
    #[serde(default)]
    pub sasl_mechanism: Option<String>,
    #[serde(default)]
    pub sasl_username: Option<String>,
    #[serde(default)]
    pub sasl_password: Option<Sensitive<String>>,
    /// CA bundle to verify the brokers' certificates (SSL protocols).
    #[serde(default)]
    pub ssl_ca_location: Option<PathBuf>,
    /// How long a produced record may wait for the broker's acknowledgement before the
    /// request that produced it fails (librdkafka `message.timeout.ms`).
    #[serde(default = "default_message_timeout_ms")]
    pub message_timeout_ms: u64,
    /// Any other librdkafka property, passed through as is. Values are treated as secrets
    /// in logs.
    #[serde(default)]
    pub properties: BTreeMap<String, Sensitive<String>>,
}

fn default_security_protocol() -> String {
    "PLAINTEXT".into()
}
fn default_message_timeout_ms() -> u64 {
    10_000
}

impl KafkaConfig {
    pub fn local() -> Self {
        Self {
            bootstrap_servers: "127.0.0.1:9092".into(),
            security_protocol: default_security_protocol(),
            sasl_mechanism: None,
            sasl_username: None,
            sasl_password: None,
            ssl_ca_location: None,
            message_timeout_ms: default_message_timeout_ms(),
            properties: BTreeMap::new(),
        }
    }

    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.bootstrap_servers.trim().is_empty() {
            errors.push("kafka.bootstrap_servers: must not be empty".into());
        }
        let protocols = ["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"];
        if !protocols.contains(&self.security_protocol.as_str()) {
            errors.push(format!(
                "kafka.security_protocol: `{}` is not one of {}",
                self.security_protocol,
                protocols.join(", ")
            ));
        }
        if self.security_protocol.starts_with("SASL") && (self.sasl_mechanism.is_none() || self.sasl_username.is_none())
        {
            errors.push("kafka.sasl_mechanism and kafka.sasl_username: required with a SASL security_protocol".into());
        }
        if self.message_timeout_ms == 0 {
            errors.push("kafka.message_timeout_ms: must be greater than 0".into());
        }
    }
}

/// The schema registry (Confluent API; Apicurio serves it under `/apis/ccompat/v7`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    pub url: String,
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Sensitive<String>>,
    #[serde(default)]
    pub bearer_token: Option<Sensitive<String>>,
    #[serde(default = "default_registry_timeout_ms")]
    pub timeout_ms: u64,
    /// Register the schemas at start. Turn off for locked-down registries where
    /// `nectar-schemas register` runs with other credentials.
    #[serde(default = "yes")]
    pub auto_register: bool,
}

fn default_registry_timeout_ms() -> u64 {
    5_000
}
fn yes() -> bool {
    true
}

impl RegistryConfig {
    pub fn local() -> Self {
        Self {
            url: "http://127.0.0.1:8081/apis/ccompat/v7".into(),
            username: None,
            password: None,
            bearer_token: None,
            timeout_ms: default_registry_timeout_ms(),
            auto_register: true,
        }
    }

    pub fn validate(&self, errors: &mut Vec<String>) {
        if !(self.url.starts_with("http://") || self.url.starts_with("https://")) {
            errors.push(format!("schema_registry.url: `{}` is not an http(s) URL", self.url));
        }
        if self.password.is_some() && self.username.is_none() {
            errors.push("schema_registry.username: required when a password is set".into());
        }
    }
}

/// The raw topics the producers write to (TopicNameStrategy subjects `<topic>-value`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTopics {
    pub forms: String,
    pub webhooks: String,
    pub apps: String,
}

impl Default for RawTopics {
    fn default() -> Self {
        Self {
            forms: "nectar.raw.forms".into(),
            webhooks: "nectar.raw.webhooks".into(),
            apps: "nectar.raw.apps".into(),
        }
    }
}

/// The admin listener: `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    pub listen: SocketAddr,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `text` for people, `json` for log pipelines.
    #[serde(default = "default_log_format")]
    pub format: String,
    /// A `tracing` filter, e.g. `info,nectar_ingest=debug`. `RUST_LOG` overrides it.
    #[serde(default = "default_log_filter")]
    pub filter: String,
}

fn default_log_format() -> String {
    "text".into()
}
fn default_log_filter() -> String {
    "info".into()
}

impl LogConfig {
    pub fn validate(&self, errors: &mut Vec<String>) {
        if !["text", "json"].contains(&self.format.as_str()) {
            errors.push(format!("log.format: `{}` is not one of text, json", self.format));
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: default_log_format(),
            filter: default_log_filter(),
        }
    }
}

/// The sections every service has.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommonConfig {
    pub kafka: KafkaConfig,
    pub schema_registry: RegistryConfig,
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
}

impl Validate for CommonConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        self.kafka.validate(errors);
        self.schema_registry.validate(errors);
        self.log.validate(errors);
    }
}

/// A service configuration: deserialized by figment, then checked as a whole.
pub trait Validate {
    /// Push one message per problem, each starting with the key it is about.
    fn validate(&self, errors: &mut Vec<String>);
}

/// Deserialize an optional string that may arrive as a number: an environment variable's
/// value such as `NECTAR_PROCESSOR__INSTANCE_ID=0` is parsed as an integer by figment.
pub fn lenient_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Lenient {
        Text(String),
        Signed(i64),
        Unsigned(u64),
        Float(f64),
        Bool(bool),
    }
    Ok(Option::<Lenient>::deserialize(d)?.map(|v| match v {
        Lenient::Text(s) => s,
        Lenient::Signed(n) => n.to_string(),
        Lenient::Unsigned(n) => n.to_string(),
        Lenient::Float(n) => n.to_string(),
        Lenient::Bool(b) => b.to_string(),
    }))
}

/// The field names of the struct `T` deserializes as (its sections, for a configuration
/// type), read from its `Deserialize` impl: empty if `T` is not a struct.
pub fn struct_fields<T: DeserializeOwned>() -> &'static [&'static str] {
    use serde::de::{Deserializer, Error as _, Visitor, value::Error};

    struct Fields<'a>(&'a mut &'static [&'static str]);

    impl<'de> Deserializer<'de> for Fields<'_> {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> Result<V::Value, Error> {
            Err(Error::custom("not a struct"))
        }

        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> Result<V::Value, Error> {
            *self.0 = fields;
            Err(Error::custom("fields read"))
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
            option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
            ignored_any
        }
    }

    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(Fields(&mut fields));
    fields
}

/// Why a configuration could not be loaded. `Display` lists every problem, one a line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid configuration: {0}")]
    Parse(Box<figment::Error>),
    #[error("invalid configuration:\n  {}", .0.join("\n  "))]
    Invalid(Vec<String>),
}

/// The figment a service reads: `defaults` (the service's embedded `default.toml`), then the
/// file at `path` if given, then `NECTAR_*__*` environment variables.
pub fn figment(defaults: &str, path: Option<&Path>) -> Figment {
    figment_layers(&[defaults], path)
}

/// [`figment`] with several default layers, later ones overriding earlier ones (a sink's
/// embedded defaults, then those its vendor spec derives).
pub fn figment_layers(defaults: &[&str], path: Option<&Path>) -> Figment {
    let mut figment = Figment::new();
    for layer in defaults {
        figment = figment.merge(Toml::string(layer));
    }
    if let Some(path) = path {
        figment = figment.merge(Toml::file_exact(path));
    }
    figment.merge(
        Env::prefixed("NECTAR_")
            .filter(|key| key.as_str().contains("__"))
            .split("__"),
    )
}

/// Load and validate a service configuration.
pub fn load<T: DeserializeOwned + Validate>(defaults: &str, path: Option<&Path>) -> Result<T, ConfigError> {
    from_figment(figment(defaults, path))
}

pub fn from_figment<T: DeserializeOwned + Validate>(figment: Figment) -> Result<T, ConfigError> {
    let config: T = figment.extract().map_err(|e| ConfigError::Parse(Box::new(e)))?;
    validated(config)
}

/// `config` if [`Validate`] finds nothing wrong with it, else every problem it found.
pub fn validated<T: Validate>(config: T) -> Result<T, ConfigError> {
    let mut errors = Vec::new();
    config.validate(&mut errors);
    if errors.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid(errors))
    }
}

#[cfg(test)]
// figment::Jail's closures return figment::Error, which is large by design.
#[allow(clippy::result_large_err)]
pub(crate) mod tests {
    use super::*;

    type TestConfig = CommonConfig;

    /// A figment jail without the environment the tests run in (CI exports the local
    /// stack's `NECTAR_*` variables).
    fn jail(test: impl FnOnce(&mut figment::Jail) -> figment::Result<()>) {
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            test(jail)
        });
    }

    /// The sections every service has, valid, for the tests of configurations that hold them.
    pub(crate) const DEFAULTS: &str = r#"
        [kafka]
        bootstrap_servers = "127.0.0.1:9092"
        [schema_registry]
        url = "http://127.0.0.1:8081/apis/ccompat/v7"
        [admin]
        listen = "127.0.0.1:9090"
    "#;

    #[test]
    fn env_overrides_file_and_nested_keys_use_double_underscore() {
        jail(|jail| {
            jail.create_file("nectar.toml", "[kafka]\nbootstrap_servers = \"file:9092\"\n")?;
            jail.set_env("NECTAR_SCHEMA_REGISTRY__URL", "http://registry:8081");
            jail.set_env("NECTAR_CONFIG", "ignored: no double underscore");
            let config: TestConfig = load(DEFAULTS, Some(Path::new("nectar.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.kafka.bootstrap_servers, "file:9092");
            assert_eq!(config.schema_registry.url, "http://registry:8081");
            Ok(())
        });
    }

    #[test]
    fn unknown_key_is_an_error_that_names_it() {
        jail(|jail| {
            jail.set_env("NECTAR_KAFKA__BOOTSTRAP_SERVER", "typo:9092");
            let err = load::<TestConfig>(DEFAULTS, None).expect_err("typo must fail");
            assert!(err.to_string().contains("bootstrap_server"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn validation_lists_every_problem_with_its_key() {
        jail(|jail| {
            jail.set_env("NECTAR_KAFKA__SECURITY_PROTOCOL", "SASL_SSL");
            jail.set_env("NECTAR_SCHEMA_REGISTRY__URL", "registry:8081");
            let err = load::<TestConfig>(DEFAULTS, None).expect_err("must fail");
            let text = err.to_string();
            assert!(text.contains("kafka.sasl_mechanism"), "{text}");
            assert!(text.contains("schema_registry.url"), "{text}");
            Ok(())
        });
    }

    #[test]
    fn secrets_never_print() {
        jail(|jail| {
            jail.set_env("NECTAR_KAFKA__SASL_PASSWORD", "hunter2");
            jail.set_env("NECTAR_KAFKA__PROPERTIES__SSL_KEY_PASSWORD", "s3cret");
            let config: TestConfig = load(DEFAULTS, None).map_err(|e| e.to_string())?;
            let debug = format!("{config:?}");
            assert!(!debug.contains("hunter2") && !debug.contains("s3cret"), "{debug}");
            assert_eq!(
                config.kafka.sasl_password.as_ref().map(|s| s.expose().as_str()),
                Some("hunter2")
            );
            Ok(())
        });
    }
}
