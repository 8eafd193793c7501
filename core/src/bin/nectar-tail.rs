//! `nectar-tail`: print the records of Nectar topics decoded from Avro, one JSON object a line.
//!
//! For people looking at a pipeline: `nectar-tail --topic nectar.raw.forms --since-ms 0 --max 10`.
//! Reads with `isolation.level=read_committed` and no consumer group commits.

use std::time::{Duration, Instant};

use clap::Parser;
use nectar_core::config::{KafkaConfig, RegistryConfig};
use nectar_core::schema::Codec;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::{Value, json};

#[derive(Debug, Parser)]
#[command(name = "nectar-tail", about = "Print Nectar records decoded from Avro as JSON lines")]
struct Cli {
    /// Topics to read (repeatable).
    #[arg(long = "topic", required = true)]
    topics: Vec<String>,
    /// Start at records written at or after this time (ms since the epoch); default: the beginning.
    #[arg(long)]
    since_ms: Option<i64>,
    /// Stop after this many records.
    #[arg(long, default_value_t = 100)]
    max: usize,
    /// Stop when no record arrived for this long (ms).
    #[arg(long, default_value_t = 3000)]
    idle_ms: u64,
    #[arg(long, env = "NECTAR_KAFKA__BOOTSTRAP_SERVERS", default_value = "127.0.0.1:9092")]
    bootstrap_servers: String,
    #[arg(
        long,
        env = "NECTAR_SCHEMA_REGISTRY__URL",
        default_value = "http://127.0.0.1:8081/apis/ccompat/v7"
    )]
    registry: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut kafka = KafkaConfig::local();
    kafka.bootstrap_servers = cli.bootstrap_servers.clone();
    let mut registry = RegistryConfig::local();
    registry.url = cli.registry.clone();
    let codec = Codec::new(&registry)?;
    let consumer: BaseConsumer = nectar_core::kafka::client_config(&kafka, "nectar-tail")
        .set("group.id", format!("nectar-tail-{}", uuid::Uuid::new_v4()))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()?;

    let mut assignment = TopicPartitionList::new();
    for topic in &cli.topics {
        let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for p in metadata.topics().first().map(|t| t.partitions()).unwrap_or_default() {
            let offset = match cli.since_ms {
                Some(ms) => Offset::Offset(ms),
                None => Offset::Beginning,
            };
            assignment.add_partition_offset(topic, p.id(), offset)?;
        }
    }
    if cli.since_ms.is_some() {
        // Offsets currently hold timestamps; resolve them to the first offset at or after.
        assignment = consumer.offsets_for_times(assignment, Duration::from_secs(10))?;
        for element in assignment.clone().elements() {
            if element.offset() == Offset::End || element.offset() == Offset::Invalid {
                assignment.set_partition_offset(element.topic(), element.partition(), Offset::End)?;
            }
        }
    }
    consumer.assign(&assignment)?;

    let mut printed = 0;
    let mut last = Instant::now();
    while printed < cli.max && last.elapsed() < Duration::from_millis(cli.idle_ms) {
        let Some(message) = consumer.poll(Duration::from_millis(100)) else {
            continue;
        };
        let message = message?;
        last = Instant::now();
        let value = match message.payload() {
            Some(bytes) => match codec.decode_value(bytes).await {
                Ok(v) => avro_to_json(v),
                Err(e) => json!({ "undecodable": e.to_string() }),
            },
            None => Value::Null,
        };
        let line = json!({
            "topic": message.topic(),
            "partition": message.partition(),
            "offset": message.offset(),
            "key": message.key().map(|k| String::from_utf8_lossy(k).into_owned()),
            "value": value,
        });
        println!("{line}");
        printed += 1;
    }
    Ok(())
}

/// Avro values as plain JSON: unions unwrapped, bytes as UTF-8 text where they are text.
fn avro_to_json(value: apache_avro::types::Value) -> Value {
    use apache_avro::types::Value as A;
    match value {
        A::Null => Value::Null,
        A::Boolean(b) => json!(b),
        A::Int(i) | A::Date(i) | A::TimeMillis(i) => json!(i),
        A::Long(l)
        | A::TimestampMillis(l)
        | A::TimestampMicros(l)
        | A::TimeMicros(l)
        | A::LocalTimestampMillis(l)
        | A::LocalTimestampMicros(l) => json!(l),
        A::Float(f) => json!(f),
        A::Double(d) => json!(d),
        A::String(s) | A::Enum(_, s) => json!(s),
        A::Bytes(b) | A::Fixed(_, b) => match String::from_utf8(b) {
            Ok(text) => serde_json::from_str(&text).unwrap_or(Value::String(text)),
            Err(e) => json!(format!("{} bytes", e.as_bytes().len())),
        },
        A::Union(_, inner) => avro_to_json(*inner),
        A::Array(items) => Value::Array(items.into_iter().map(avro_to_json).collect()),
        A::Map(map) => Value::Object(map.into_iter().map(|(k, v)| (k, avro_to_json(v))).collect()),
        A::Record(fields) => Value::Object(fields.into_iter().map(|(k, v)| (k, avro_to_json(v))).collect()),
        other => json!(format!("{other:?}")),
    }
}
