//! `nectar-sink-hubspot`: upserts each event's person into HubSpot as a contact, by e-mail,
//! with the properties the mapping names; optionally upserts their company and associates
//! the two. See `README.md` for the configuration and the exact delivery guarantee.
//!
//! Layout: [`config`] (`[target]`), [`mapping`] (event → properties, same-e-mail merging),
//! auth from `nectar_sink::auth` (private-app token or OAuth refresh), [`answer`] (reading HubSpot's answers:
//! every classification), [`connector`] (requests and the start check).

pub mod answer;
pub mod config;
pub mod connector;
pub mod mapping;

use nectar_sink::{Sink, SinkServiceConfig};

pub use config::HubspotConfig;
pub use connector::HubspotConnector;

/// The embedded defaults (`default.toml`).
pub const DEFAULTS: &str = include_str!("../default.toml");

/// The `nectar-sink-hubspot` binary.
#[derive(Debug)]
pub struct HubspotSink;

impl Sink for HubspotSink {
    type Target = HubspotConfig;
    type Connector = HubspotConnector;
    const BINARY: &'static str = "nectar-sink-hubspot";
    const ABOUT: &'static str = "Upserts the leads on nectar.deliver.hubspot into HubSpot as contacts, by e-mail.";
    const DEFAULTS: &'static str = DEFAULTS;

    fn connector(config: &SinkServiceConfig<HubspotConfig>) -> anyhow::Result<HubspotConnector> {
        HubspotConnector::new(
            &config.target,
            std::time::Duration::from_millis(config.sink.request_timeout_ms),
        )
    }
}
