//! `nectar-sink-slack`: delivers `nectar.deliver.slack` to Slack, one message per event.
//!
//! Two modes (`target.mode`):
//! - **bot**: `chat.postMessage` with a bot token, Block Kit blocks and a text fallback from a
//!   minijinja template, to a channel chosen by the event's type. Each message carries the
//!   event id as message metadata, and an event that may already have been posted is looked
//!   up in the channel's history before it is posted: each event shows once.
//! - **webhook**: an incoming webhook. It cannot be looked up: at least once, with duplicates
//!   bounded by the one request in flight.
//!
//! Files: [`config`] (the `[target]` section), [`template`] (rendering), [`request`] (routes
//! and request bodies), [`classify`] (Slack's answers), [`lookup`] (the duplicate lookup),
//! [`connector`] (the [`nectar_sink::Connector`]). `README.md` documents configuration and
//! guarantees.

pub mod classify;
pub mod config;
pub mod connector;
pub mod lookup;
pub mod request;
pub mod template;

use std::time::Duration;

use nectar_sink::SinkServiceConfig;

pub use config::SlackConfig;
pub use connector::SlackConnector;

/// The Slack sink binary.
#[derive(Debug)]
pub struct SlackSink;

impl nectar_sink::Sink for SlackSink {
    type Target = SlackConfig;
    type Connector = SlackConnector;
    const BINARY: &'static str = "nectar-sink-slack";
    const ABOUT: &'static str = "Nectar sink: posts events to Slack (chat.postMessage or an incoming webhook)";
    const DEFAULTS: &'static str = include_str!("../default.toml");

    fn connector(config: &SinkServiceConfig<SlackConfig>) -> anyhow::Result<SlackConnector> {
        SlackConnector::new(
            config.target.clone(),
            Duration::from_millis(config.sink.request_timeout_ms),
        )
    }
}
