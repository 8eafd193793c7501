//! `replay`: put chosen dead letters back on the delivery topic, after their cause is fixed.
//!
//! The work is [`nectar_core::replay`]'s, shared with the processors: read the sink's
//! dead-letter topic up to its end at start, keep the records matching every filter given
//! (time the dead letter was written, a text in its reason, event ids, origin topic), and
//! produce each one to the delivery topic (or `--to`) with its original key, value and headers
//! (the dead-letter headers dropped, `nectar-replayed-from` added), waiting for the broker's
//! acknowledgement. Replaying twice delivers twice: the sinks' writes are idempotent by event
//! id, so the target still holds each event once.

use nectar_core::config::KafkaConfig;
pub use nectar_core::replay::{Destination, ReplayArgs, ReplayReport, parse_time};

use crate::config::SinkConfig;

/// The help of `--to` in a sink's `replay`.
pub const TO_HELP: &str = "Produce to this topic instead of the sink's delivery topic";

pub async fn run(kafka: &KafkaConfig, sink: &SinkConfig, args: &ReplayArgs) -> anyhow::Result<ReplayReport> {
    nectar_core::replay::run(kafka, &sink.dlq_topic(), Destination::Topic(sink.topic()), args).await
}
