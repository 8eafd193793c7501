//! Local fakes of the SaaS APIs the sinks deliver to (they cannot be reached from here).
//! Each checks every request exactly as the vendor documents it and answers as the vendor
//! does, errors and rate limits included, and records what it accepted so tests can count
//! deliveries by event id. Failures are injected per test.
//!
//! The newer fakes share their machinery ([`harness`]): a vendor module holds only its contract.

pub mod amplitude;
pub mod bigquery;
pub mod discord;
pub mod ga4;
pub mod harness;
pub mod hubspot;
pub mod kit;
pub mod mailchimp;
pub mod mixpanel;
pub mod pipedrive;
pub mod salesforce;
pub mod sendgrid;
pub mod slack;
pub mod teams;
pub mod telegram;
pub mod webhook;
