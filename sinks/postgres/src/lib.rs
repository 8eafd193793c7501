//! The PostgreSQL sink: `nectar.deliver.postgres` into tables, one transaction per batch that
//! writes the rows and the consumed positions together (exactly once at the target).
//!
//! - [`config`]: the `[target]` section (URL, tables, mapped columns).
//! - [`mapping`]: event → row, and the `INSERT ... SELECT FROM UNNEST(...)` per table.
//! - [`connector`]: start (connect, create and check tables), deliver, stored positions.
//! - [`errors`]: what each SQLSTATE means for a delivery.
//!
//! See `README.md` for the configuration, the guarantee and how to reset or replay.

pub mod config;
pub mod connector;
pub mod errors;
pub mod mapping;

pub use config::{PostgresConfig, TableConfig};
pub use connector::PostgresConnector;

use nectar_sink::{Sink, SinkServiceConfig};

/// The `nectar-sink-postgres` binary.
#[derive(Debug)]
pub struct PostgresSink;

impl Sink for PostgresSink {
    type Target = PostgresConfig;
    type Connector = PostgresConnector;
    const BINARY: &'static str = "nectar-sink-postgres";
    const ABOUT: &'static str =
        "Nectar sink: delivers nectar.deliver.postgres into PostgreSQL tables, rows and positions in one transaction.";
    const DEFAULTS: &'static str = include_str!("../default.toml");

    fn connector(config: &SinkServiceConfig<PostgresConfig>) -> anyhow::Result<PostgresConnector> {
        PostgresConnector::new(&config.target, config.sink.concurrency, config.sink.group_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nectar_core::config::Validate;

    #[test]
    fn the_shipped_defaults_are_valid() {
        use figment::providers::Format;
        let figment = figment::Figment::from(figment::providers::Toml::string(PostgresSink::DEFAULTS));
        let config: SinkServiceConfig<PostgresConfig> = nectar_core::config::from_figment(figment).expect("valid");
        let mut errors = Vec::new();
        config.validate(&mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(config.sink.max_batch, 1000);
        assert_eq!(config.sink.concurrency, 1);
        assert_eq!(config.target.default_table, "nectar_events");
        assert_eq!(config.target.tables.len(), 0);
    }
}
