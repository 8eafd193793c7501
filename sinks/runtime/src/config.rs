//! The configuration every sink service reads: the shared sections, the `[sink]` runtime
//! settings and the connector's own `[target]` section.

use nectar_core::config::{AdminConfig, KafkaConfig, LogConfig, RegistryConfig, Validate};
use serde::Deserialize;
use serde::de::DeserializeOwned;

/// A sink service's whole configuration. `T` is the connector's `[target]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
#[serde(bound = "T: DeserializeOwned")]
pub struct SinkServiceConfig<T> {
    pub kafka: KafkaConfig,
    pub schema_registry: RegistryConfig,
    pub admin: AdminConfig,
    #[serde(default)]
    pub log: LogConfig,
    pub sink: SinkConfig,
    pub target: T,
}

impl<T: Validate> Validate for SinkServiceConfig<T> {
    fn validate(&self, errors: &mut Vec<String>) {
        self.kafka.validate(errors);
        self.schema_registry.validate(errors);
        self.log.validate(errors);
        self.sink.validate(errors);
        self.target.validate(errors);
    }
}

impl<T: DeserializeOwned + Validate> nectar_core::service::ServiceConfig for SinkServiceConfig<T> {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

/// `[sink]`: how the runtime consumes, batches, retries and limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SinkConfig {
    /// The sink's name: metrics label and the default topic names.
    pub name: String,
    /// Consumer group; instances with the same group split the delivery topic's partitions.
    #[serde(default)]
    pub group_id: Option<String>,
    /// Topic to deliver. Default `nectar.deliver.<name>`.
    #[serde(default)]
    pub topic: Option<String>,
    /// Where rejected events go. Default `nectar.dlq.sink-<name>`.
    #[serde(default)]
    pub dlq_topic: Option<String>,
    /// Most events in a batch.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// Most record bytes in a batch.
    #[serde(default = "default_max_batch_bytes")]
    pub max_batch_bytes: usize,
    /// How long a batch waits for more events once it has one.
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Requests in flight to the target at once (a batch larger than the connector's
    /// request size is split).
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Requests per second the target allows (its published quota); 0: no limit.
    #[serde(default)]
    pub rate_limit_per_second: f64,
    /// Requests allowed in a burst above the rate (at least 1).
    #[serde(default = "default_burst")]
    pub rate_limit_burst: u32,
    /// First retry delay; each retry doubles it up to `retry_max_ms`, and the actual wait is
    /// drawn uniformly below it (full jitter). A target's `Retry-After` is waited in full.
    #[serde(default = "default_retry_initial_ms")]
    pub retry_initial_ms: u64,
    #[serde(default = "default_retry_max_ms")]
    pub retry_max_ms: u64,
    /// Attempts an item that fails on its own (a partial failure) gets before it is
    /// dead-lettered. Whole-request failures (the target is down) never count.
    #[serde(default = "default_max_item_attempts")]
    pub max_item_attempts: u32,
    /// Time limit of one delivery call.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// How long the start check retries an unreachable target before giving up.
    #[serde(default = "default_start_timeout_ms")]
    pub start_timeout_ms: u64,
    /// On SIGTERM, how long to wait for the batch in flight before leaving it uncommitted.
    #[serde(default = "default_shutdown_timeout_ms")]
    pub shutdown_timeout_ms: u64,
    /// Consumer group session timeout: how long a crashed instance keeps its partitions
    /// before the group gives them to another one (Kafka's default, 45 s).
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
}

fn default_max_batch() -> usize {
    500
}
fn default_max_batch_bytes() -> usize {
    8 * 1024 * 1024
}
fn default_linger_ms() -> u64 {
    100
}
fn default_concurrency() -> usize {
    4
}
fn default_burst() -> u32 {
    1
}
fn default_retry_initial_ms() -> u64 {
    200
}
fn default_retry_max_ms() -> u64 {
    30_000
}
fn default_max_item_attempts() -> u32 {
    8
}
fn default_request_timeout_ms() -> u64 {
    30_000
}
fn default_start_timeout_ms() -> u64 {
    60_000
}
fn default_shutdown_timeout_ms() -> u64 {
    20_000
}
fn default_session_timeout_ms() -> u64 {
    45_000
}

impl SinkConfig {
    pub fn group_id(&self) -> String {
        self.group_id
            .clone()
            .unwrap_or_else(|| format!("nectar-sink-{}", self.name))
    }

    pub fn topic(&self) -> String {
        self.topic
            .clone()
            .unwrap_or_else(|| format!("nectar.deliver.{}", self.name))
    }

    pub fn dlq_topic(&self) -> String {
        self.dlq_topic
            .clone()
            .unwrap_or_else(|| format!("nectar.dlq.sink-{}", self.name))
    }

    pub fn validate(&self, errors: &mut Vec<String>) {
        if self.name.trim().is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            errors.push("sink.name: must be letters, digits, `-` or `_`".into());
        }
        if self.max_batch == 0 {
            errors.push("sink.max_batch: must be at least 1".into());
        }
        if self.max_batch_bytes == 0 {
            errors.push("sink.max_batch_bytes: must be at least 1".into());
        }
        if self.concurrency == 0 {
            errors.push("sink.concurrency: must be at least 1".into());
        }
        if !(self.rate_limit_per_second >= 0.0 && self.rate_limit_per_second.is_finite()) {
            errors.push("sink.rate_limit_per_second: must be 0 (no limit) or a positive number".into());
        }
        if self.rate_limit_burst == 0 {
            errors.push("sink.rate_limit_burst: must be at least 1".into());
        }
        if self.retry_initial_ms == 0 || self.retry_max_ms < self.retry_initial_ms {
            errors.push("sink.retry_initial_ms: must be at least 1 and at most sink.retry_max_ms".into());
        }
        if self.max_item_attempts == 0 {
            errors.push("sink.max_item_attempts: must be at least 1".into());
        }
        if self.session_timeout_ms < 1_000 {
            errors.push("sink.session_timeout_ms: must be at least 1000 (brokers refuse less than their group.min.session.timeout.ms, 6000 by default)".into());
        }
        if self.request_timeout_ms == 0 {
            errors.push("sink.request_timeout_ms: must be at least 1".into());
        }
    }
}
