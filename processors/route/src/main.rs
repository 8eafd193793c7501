//! `nectar-route`: scored events in, one copy per matching sink out on
//! `nectar.deliver.<sink>`, exactly once. The value is copied byte for byte: the same
//! `io.nectar.Event` schema id, registered under every delivery topic's subject at start.
//! Only the fields the rules read are decoded (`nectar_route::projection`).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::Arc;

use nectar_core::config::Validate;
use nectar_core::kafka::{TopicSpec, ensure_topics};
use nectar_core::processor::{InputRecord, LoopSettings, Output, ProcessError, Processor, codec_error, event_headers};
use nectar_core::schema::{self, Codec};
use nectar_core::service::{Binary, ProcessorServiceConfig};
use nectar_route::projection::Projector;
use nectar_route::{RouteConfig, Router, envelope_str};
use prometheus::{IntCounter, IntCounterVec, Opts, Registry};
use serde::Deserialize;

const DEFAULTS: &str = include_str!("../default.toml");
/// Header naming the rules that sent the event to this sink.
pub const RULES_HEADER: &str = "nectar-route-rules";

/// route's own sections.
#[derive(Debug, Deserialize)]
struct Own {
    topics: Topics,
    route: RouteConfig,
}

type Config = ProcessorServiceConfig<Own>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Topics {
    input: String,
    deliver_prefix: String,
    create_partitions: i32,
}

impl Validate for Own {
    fn validate(&self, errors: &mut Vec<String>) {
        if let Err(rule_errors) = Router::new(&self.route) {
            errors.extend(rule_errors);
        }
    }
}

struct Route {
    router: Router,
    codec: Arc<Codec>,
    /// The rules' fields, compiled against each writer schema seen (by id).
    projectors: HashMap<u32, Projector>,
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
        let (schema_id, datum) = schema::split_frame(payload).map_err(|e| codec_error("cannot decode the event", e))?;
        let projector = self.projector(schema_id).await?;
        let event = projector
            .read(datum)
            .map_err(|e| ProcessError::Reject(format!("cannot decode the event: {e}")))?;
        let event_id = envelope_str(&event, "event_id").unwrap_or_default().to_owned();
        let routed = self.router.route_value(event);
        for failure in &routed.failed {
            tracing::debug!(rule = failure.rule, event_id, error = failure.message, "rule failed");
            self.rule_errors.with_label_values(&[&failure.rule]).inc();
        }
        if routed.sinks.is_empty() {
            self.unrouted.inc();
        }
        let mut headers = event_headers(record, &event_id);
        headers.push((RULES_HEADER.to_owned(), routed.matched.join(",").into_bytes()));
        Ok(routed
            .sinks
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

impl Route {
    /// The projector of the rules' fields for writer schema `id`, compiled on first use.
    async fn projector(&mut self, id: u32) -> Result<&Projector, ProcessError> {
        if self.projectors.contains_key(&id) {
            return Ok(&self.projectors[&id]);
        }
        let writer = self
            .codec
            .writer_schema(id)
            .await
            .map_err(|e| codec_error(&format!("cannot read writer schema {id}"), e))?;
        let name = writer.name().map(|n| n.fullname(None));
        if name.as_deref() != Some(schema::EVENT.name) {
            return Err(ProcessError::Reject(format!(
                "writer schema {id} is {}, not {}",
                name.as_deref().unwrap_or("unnamed"),
                schema::EVENT.name
            )));
        }
        let projector = Projector::new(&writer, self.router.fields())
            .map_err(|e| ProcessError::Reject(format!("writer schema {id}: {e}")))?;
        Ok(self.projectors.entry(id).or_insert(projector))
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
    let Own {
        topics: topic_config,
        route,
    } = config.own;
    let router = Router::new(&route).map_err(|e| anyhow::anyhow!(e.join("; ")))?;
    let topics: Vec<String> = router
        .all_sinks()
        .iter()
        .map(|s| format!("{}{s}", topic_config.deliver_prefix))
        .collect();
    if topic_config.create_partitions > 0 {
        let specs: Vec<TopicSpec> = topics
            .iter()
            .map(|t| TopicSpec::new(t.as_str(), topic_config.create_partitions))
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
        projectors: HashMap::new(),
        prefix: topic_config.deliver_prefix,
        routed,
        unrouted,
        rule_errors,
    };
    let settings = LoopSettings {
        name: "route".into(),
        kafka: config.kafka,
        processor: config.processor,
        inputs: vec![topic_config.input],
    };
    nectar_core::processor::run_service(settings, config.admin.listen, processor, registry).await
}
