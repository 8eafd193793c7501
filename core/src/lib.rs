//! The shared core of every Nectar service.
//!
//! Layering is one-way: `config` and `events` know nothing of Kafka; `kafka` and `schema`
//! build clients from config; `admin`, `telemetry` and `shutdown` are the service chrome every
//! binary wires up the same way. Services depend on this crate, never on each other.

pub mod admin;
pub mod config;
pub mod events;
pub mod ids;
pub mod kafka;
pub mod processor;
pub mod replay;
pub mod schema;
pub mod service;
pub mod shutdown;
pub mod state;
pub mod telemetry;
pub mod trace;

pub use config::Sensitive;
