//! `nectar-sink-bigquery`: streams `nectar.deliver.bigquery` into a BigQuery table.
//!
//! Each event becomes one row of a table whose schema is derived from the Avro schema of
//! `io.nectar.Event` ([`schema`]), sent with `tabledata.insertAll` and `insertId` = the event
//! id ([`request`]), authenticated as a service account ([`auth`]). [`answer`] decides, per
//! row and per request, what is delivered, retried, dead-lettered or fatal.
//!
//! Delivery guarantee (see [`connector`]): offsets are committed only after BigQuery accepted
//! the rows; a redelivery (after a crash or a lost answer) is deduplicated by `insertId` on a
//! best-effort basis for about a minute, and may show twice after that.

pub mod answer;
pub mod auth;
pub mod config;
pub mod connector;
pub mod request;
pub mod schema;

pub use config::BigQueryConfig;
pub use connector::BigQueryConnector;

use nectar_sink::{Sink, SinkServiceConfig};

/// The BigQuery sink service.
#[derive(Debug)]
pub struct BigQuerySink;

impl Sink for BigQuerySink {
    type Target = BigQueryConfig;
    type Connector = BigQueryConnector;
    const BINARY: &'static str = "nectar-sink-bigquery";
    const ABOUT: &'static str =
        "Streams Nectar events into a BigQuery table (tabledata.insertAll, insertId = event id).";
    const DEFAULTS: &'static str = include_str!("../default.toml");

    fn connector(config: &SinkServiceConfig<BigQueryConfig>) -> anyhow::Result<BigQueryConnector> {
        BigQueryConnector::new(
            &config.target,
            std::time::Duration::from_millis(config.sink.request_timeout_ms),
        )
    }
}
