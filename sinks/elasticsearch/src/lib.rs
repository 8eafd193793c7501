//! `nectar-sink-elasticsearch`: delivers `nectar.deliver.elasticsearch` to Elasticsearch
//! (7.8+, 8.x) or OpenSearch (1.x, 2.x) through the common `_bulk`, `_index_template` and
//! `GET /` APIs.
//!
//! Guarantee: every event the runtime commits was acknowledged by the cluster as a document
//! whose `_id` is the event id, in the index named by the event's own `occurred_at` (and
//! workspace). Delivery to the cluster is at least once (a crash between the cluster's answer
//! and the offset commit sends the batch again), but the `_id` makes the second write replace
//! the first, so the index holds each event exactly once. A document the cluster refuses
//! (mapping conflict, strict mapping, bad index name) goes to the dead-letter topic with the
//! cluster's error; replaying it after the cause is fixed writes it with the same `_id`.
//! Where the guarantee ends: changing `target.index` while old events are still being
//! redelivered or replayed writes them to the new index beside their first copy.
//!
//! Layout: [`config`] (the `[target]` section), [`index`] (index names per event),
//! [`mapping`] (the document and the index template), [`bulk`] (the `_bulk` body and the
//! classification of its answer), [`erasure`] (GDPR erasure requests: `_delete_by_query` of
//! the lead), [`connector`] (start check, template install, delivery).

pub mod bulk;
pub mod config;
pub mod connector;
pub mod erasure;
pub mod index;
pub mod mapping;

use std::time::Duration;

pub use config::ElasticsearchConfig;
pub use connector::ElasticsearchConnector;
use nectar_sink::SinkServiceConfig;

/// The sink binary.
#[derive(Debug)]
pub struct ElasticsearchSink;

impl nectar_sink::Sink for ElasticsearchSink {
    type Target = ElasticsearchConfig;
    type Connector = ElasticsearchConnector;
    const BINARY: &'static str = "nectar-sink-elasticsearch";
    const ABOUT: &'static str =
        "Delivers nectar.deliver.elasticsearch to Elasticsearch or OpenSearch with _bulk, one document per event id.";
    const DEFAULTS: &'static str = include_str!("../default.toml");

    fn connector(config: &SinkServiceConfig<ElasticsearchConfig>) -> anyhow::Result<ElasticsearchConnector> {
        if config.sink.concurrency > 1 && config.target.max_bulk_items < config.sink.max_batch {
            // The runtime then delivers a batch as several calls at once, and an erasure
            // request is only ordered against the events of its own call.
            tracing::warn!(
                "target.max_bulk_items ({}) < sink.max_batch ({}) with sink.concurrency {}: an erasure \
                 request may run before an earlier event of its lead in another request of the batch is \
                 indexed; keep max_bulk_items >= max_batch or concurrency = 1",
                config.target.max_bulk_items,
                config.sink.max_batch,
                config.sink.concurrency
            );
        }
        ElasticsearchConnector::new(&config.target, Duration::from_millis(config.sink.request_timeout_ms))
    }
}
