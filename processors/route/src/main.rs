//! `nectar-route`: scored events in, one copy per matching sink out on
//! `nectar.deliver.<sink>`, exactly once. The value is copied byte for byte: the same
//! `io.nectar.Event` schema id, registered under every delivery topic's subject at start.

use std::process::ExitCode;
use std::sync::Arc;

use nectar_core::config::{AdminConfig, KafkaConfig, LogConfig, RegistryConfig, Validate};
use nectar_core::events::Event;
use nectar_core::kafka::{TopicSpec, ensure_topics};
use nectar_core::processor::{
    InputRecord, LoopSettings, Output, ProcessError, Processor, ProcessorConfig, codec_error, event_headers,
};
use nectar_core::schema::{self, Codec};
use nectar_core::service::{Binary, ProcessorServiceConfig};
use nectar_route::{RouteConfig, Router};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../default.toml");
/// Header naming the rules that sent the event to this sink.
pub const RULES_HEADER: &str = "nectar-route-rules";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    kafka: KafkaConfig,
    schema_registry: RegistryConfig,
    admin: AdminConfig,
    #[serde(default)]
    log: LogConfig,
    processor: ProcessorConfig,
    topics: Topics,
    route: RouteConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Topics {
    input: String,
    deliver_prefix: String,
    create_partitions: i32,
}

impl nectar_core::service::ServiceConfig for Config {
    fn log(&self) -> &LogConfig {
        &self.log
    }
}

impl ProcessorServiceConfig for Config {
    fn kafka(&self) -> &KafkaConfig {
        &self.kafka
    }
    fn processor(&self) -> &ProcessorConfig {
        &self.processor
    }
}

impl Validate for Config {
    fn validate(&self, errors: &mut Vec<String>) {
        self.kafka.validate(errors);
        self.schema_registry.validate(errors);
        self.log.validate(errors);
        self.processor.validate(errors);
        if let Err(rule_errors) = Router::new(&self.route) {
            errors.extend(rule_errors);
        }
    }
}

struct Route {
    router: Router,
    codec: Arc<Codec>,
    prefix: String,
    routed: IntCounterVec,
    unrouted: IntCounter,
    rule_errors: IntCounterVec,
}

impl Processor for Route {
    async fn process(&mut self, record: &InputRecord) -> Result<Vec<Output>, ProcessError> {
        let payload = record
            .payload
            .as_deref()
            .ok_or_else(|| ProcessError::Reject("the record has no value".into()))?;
        let event: Event = self
            .codec
            .decode(payload)
            .await
            .map_err(|e| codec_error("cannot decode the event", e))?;
        let (sinks, matched, failed) = self.router.route(&event);
        for failure in &failed {
            tracing::debug!(
                rule = failure.rule,
                event_id = event.envelope.event_id,
                error = failure.message,
                "rule failed"
            );
            self.rule_errors.with_label_values(&[&failure.rule]).inc();
        }
        if sinks.is_empty() {
            self.unrouted.inc();
        }
        let mut headers = event_headers(record, &event.envelope.event_id);
        headers.push((RULES_HEADER.to_owned(), matched.join(",").into_bytes()));
        Ok(sinks
            .into_iter()
            .map(|sink| {
                self.routed.with_label_values(&[&sink]).inc();
                Output {
                    topic: format!("{}{sink}", self.prefix),
                    partition: None,
                    key: record.key.clone(),
                    payload: Some(payload.to_vec()),
                    headers: headers.clone(),
                }
            })
            .collect())
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let binary = Binary {
        name: "nectar-route",
        about: "Routes events to per-sink delivery topics by CEL rules, exactly once.",
        defaults: DEFAULTS,
    };
    nectar_core::service::processor_main(binary, run).await
}

async fn run(config: Config) -> anyhow::Result<()> {
    let router = Router::new(&config.route).map_err(|e| anyhow::anyhow!(e.join("; ")))?;
    let topics: Vec<String> = router
        .all_sinks()
        .iter()
        .map(|s| format!("{}{s}", config.topics.deliver_prefix))
        .collect();
    if config.topics.create_partitions > 0 {
        let specs: Vec<TopicSpec> = topics
            .iter()
            .map(|t| TopicSpec::new(t.as_str(), config.topics.create_partitions))
            .collect();
        ensure_topics(&config.kafka, &specs).await?;
    }
    let codec = Arc::new(Codec::new(&config.schema_registry)?);
    if config.schema_registry.auto_register {
        for topic in &topics {
            codec
                .register(topic, &schema::EVENT)
                .await
                .map_err(|e| anyhow::anyhow!("registering the event schema for {topic}: {e}"))?;
        }
    }
    let registry = Registry::new();
    let routed = IntCounterVec::new(
        Opts::new("nectar_route_routed_total", "Events sent to each sink's delivery topic"),
        &["sink"],
    )?;
    let unrouted = IntCounter::new("nectar_route_unrouted_total", "Events no rule sent anywhere")?;
    let rule_errors = IntCounterVec::new(
        Opts::new(
            "nectar_route_rule_errors_total",
            "Rule evaluations that failed (counted as no match)",
        ),
        &["rule"],
    )?;
    registry.register(Box::new(routed.clone()))?;
    registry.register(Box::new(unrouted.clone()))?;
    registry.register(Box::new(rule_errors.clone()))?;
    let processor = Route {
        router,
        codec,
        prefix: config.topics.deliver_prefix,
        routed,
        unrouted,
        rule_errors,
    };
    let settings = LoopSettings {
        name: "route".into(),
        kafka: config.kafka,
        processor: config.processor,
        inputs: vec![config.topics.input],
    };
    nectar_core::processor::run_service(settings, config.admin.listen, processor, registry).await
}
