//! The Kafka client factory: one place that turns [`KafkaConfig`] into librdkafka settings.
//!
//! Producers are idempotent with `acks=all`: a record is acknowledged only once every in-sync
//! replica has it, and librdkafka's internal retries never duplicate or reorder it within a
//! partition. Consumers read with `isolation.level=read_committed` and never auto-commit: the
//! stage that owns the consumer decides when an offset is done.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::StreamConsumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, Producer};

use crate::config::KafkaConfig;

/// Connection and security settings shared by every client.
pub fn client_config(cfg: &KafkaConfig, client_id: &str) -> ClientConfig {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", &cfg.bootstrap_servers)
        .set("client.id", client_id)
        .set("security.protocol", &cfg.security_protocol);
    if let Some(mechanism) = &cfg.sasl_mechanism {
        config.set("sasl.mechanism", mechanism);
    }
    if let Some(user) = &cfg.sasl_username {
        config.set("sasl.username", user);
    }
    if let Some(password) = &cfg.sasl_password {
        config.set("sasl.password", password.expose());
    }
    if let Some(ca) = &cfg.ssl_ca_location {
        config.set("ssl.ca.location", ca.to_string_lossy());
    }
    for (key, value) in &cfg.properties {
        config.set(key, value.expose());
    }
    config
}

/// An idempotent producer (`enable.idempotence=true`, `acks=all`).
pub fn idempotent_producer(cfg: &KafkaConfig, client_id: &str) -> Result<FutureProducer, KafkaError> {
    let mut config = client_config(cfg, client_id);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("message.timeout.ms", cfg.message_timeout_ms.to_string());
    // Properties given explicitly in config win over the defaults above.
    for (key, value) in &cfg.properties {
        config.set(key, value.expose());
    }
    config.create()
}

/// A consumer that sees only committed transactional records and never commits on its own.
pub fn read_committed_consumer(
    cfg: &KafkaConfig,
    client_id: &str,
    group_id: &str,
) -> Result<StreamConsumer, KafkaError> {
    let mut config = client_config(cfg, client_id);
    config
        .set("group.id", group_id)
        .set("isolation.level", "read_committed")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    for (key, value) in &cfg.properties {
        config.set(key, value.expose());
    }
    config.create()
}

/// A topic the service needs, as `stack up` and `ensure_topics` create it.
#[derive(Debug, Clone)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication: i32,
    pub config: Vec<(String, String)>,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
            replication: 1,
            config: Vec::new(),
        }
    }
}

/// Create the topics that do not exist yet; existing ones are left as they are.
pub async fn ensure_topics(cfg: &KafkaConfig, topics: &[TopicSpec]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = client_config(cfg, "nectar-admin").create()?;
    let new_topics: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            let mut topic = NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication));
            for (k, v) in &t.config {
                topic = topic.set(k, v);
            }
            topic
        })
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin.create_topics(&new_topics, &options).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("could not create topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// Whether the cluster answers and `topic` exists with at least one partition. Metadata
/// requests block, so this runs off the async runtime with a finite timeout.
pub async fn probe_topic(producer: &FutureProducer, topic: &str, timeout: Duration) -> Result<(), String> {
    let producer = producer.clone();
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let metadata = producer
            .client()
            .fetch_metadata(Some(&topic), timeout)
            .map_err(|e| format!("kafka metadata request failed: {e}"))?;
        match metadata.topics().first() {
            Some(t) if t.error().is_none() && !t.partitions().is_empty() => Ok(()),
            Some(t) => Err(format!("topic {topic} is not available: {:?}", t.error())),
            None => Err(format!("topic {topic} not found")),
        }
    })
    .await
    .map_err(|e| format!("metadata probe panicked: {e}"))?
}

/// Set `lag{topic, partition}` to how far `consumer`'s position is behind the end of each
/// partition it owns (one watermark request per partition, each bounded by `timeout`).
pub fn record_lag<C: rdkafka::consumer::ConsumerContext>(
    consumer: &rdkafka::consumer::BaseConsumer<C>,
    lag: &prometheus::IntGaugeVec,
    timeout: Duration,
) {
    use rdkafka::consumer::Consumer;
    use rdkafka::topic_partition_list::Offset;
    let Ok(positions) = consumer.position() else {
        return;
    };
    for element in positions.elements() {
        let Offset::Offset(position) = element.offset() else {
            continue;
        };
        if let Ok((_, high)) = consumer.fetch_watermarks(element.topic(), element.partition(), timeout) {
            lag.with_label_values(&[element.topic(), &element.partition().to_string()])
                .set((high - position).max(0));
        }
    }
}

/// Headers to produce, from owned `(name, value)` pairs (the inverse of [`owned_headers`]).
pub fn kafka_headers(headers: &[(String, Vec<u8>)]) -> rdkafka::message::OwnedHeaders {
    headers.iter().fold(
        rdkafka::message::OwnedHeaders::new_with_capacity(headers.len()),
        |owned, (key, value)| {
            owned.insert(rdkafka::message::Header {
                key,
                value: Some(value.as_slice()),
            })
        },
    )
}

/// The context of a consumer that reads partitions to their end (`enable.partition.eof`): the
/// end of a partition is how it knows it is done, not an error to log. (librdkafka also
/// reports it as a global error, which the default context logs at ERROR every time.)
#[derive(Debug, Clone, Copy, Default)]
pub struct ReadToEndContext;

impl rdkafka::ClientContext for ReadToEndContext {
    fn error(&self, error: KafkaError, reason: &str) {
        let end_of_partition = matches!(error, KafkaError::PartitionEOF(_))
            || error.rdkafka_error_code() == Some(RDKafkaErrorCode::PartitionEOF);
        if !end_of_partition {
            tracing::error!("librdkafka: {error}: {reason}");
        }
    }
}

impl rdkafka::consumer::ConsumerContext for ReadToEndContext {}

/// Wait until every record `producer` has sent is acknowledged, at most `timeout`, checking
/// every 200 µs. Call it before `commit_transaction` and `abort_transaction`.
///
/// rust-rdkafka's `flush` (which its `commit_transaction` calls first) polls in blocking
/// 100 ms steps whenever a delivery report is still outstanding, even one served an instant
/// later by the producer's own polling thread: every transaction commit took at least 100 ms
/// (`deploy/local/bench txn` shows where). After this, that flush finds nothing to wait for.
pub fn wait_delivered<C: rdkafka::producer::ProducerContext, P: Producer<C>>(
    producer: &P,
    timeout: Duration,
) -> Result<(), KafkaError> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        match producer.flush(Duration::ZERO) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut)) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(e),
        }
    }
}

/// A consumed record's headers, owned (a header without a value becomes an empty one).
pub fn owned_headers<M: rdkafka::message::Message>(message: &M) -> Vec<(String, Vec<u8>)> {
    use rdkafka::message::Headers;
    message
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use rdkafka::message::Headers;

    #[test]
    fn kafka_headers_keep_names_values_and_order() {
        let pairs = vec![
            ("traceparent".to_owned(), b"00-abc".to_vec()),
            ("nectar-event-id".to_owned(), b"e1".to_vec()),
            ("empty".to_owned(), Vec::new()),
        ];
        let headers = super::kafka_headers(&pairs);
        let back: Vec<(String, Vec<u8>)> = headers
            .iter()
            .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
            .collect();
        assert_eq!(back, pairs);
    }
}
