//! The sink runtime: every Nectar sink service is this runtime plus a [`Connector`].
//!
//! The runtime consumes the sink's delivery topic (`nectar.deliver.<sink>`, `read_committed`),
//! batches by count, bytes and linger, decodes each `io.nectar.Event`, and hands the batch to
//! the connector in requests of the connector's size, with a concurrency limit, a rate
//! limiter, and retries with capped exponential backoff and full jitter (a target's
//! `Retry-After` is always waited in full). An item the target will never accept goes to
//! `nectar.dlq.sink-<sink>` with the reason, the target's answer, the attempt count and its
//! origin; `replay` puts chosen dead letters back on the delivery topic.
//!
//! Offsets: a batch is committed only once every item in it is delivered or dead-lettered,
//! so a partition's committed offset never passes an event the target has not durably
//! accepted. Targets with transactions store the positions with the data and the consumer
//! starts from them. See [`runtime`] for rebalances and shutdown.

pub mod auth;
pub mod config;
pub mod connector;
mod deliver;
pub mod http;
pub mod metrics;
pub mod replay;
pub mod retry;
pub mod runtime;
pub mod service;
pub mod template;

pub use config::{SinkConfig, SinkServiceConfig};
pub use connector::{Connector, Delivery, DeliveryError, Item, ItemResult, Positions, StartError};
pub use service::Sink;
