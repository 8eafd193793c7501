//! The `main` every sink binary shares:
//!
//! ```text
//! nectar-sink-<name> [--config FILE] [run]        consume and deliver (the default)
//! nectar-sink-<name> [--config FILE] check-config validate the configuration and exit
//! nectar-sink-<name> [--config FILE] check        run the start check against the target
//! nectar-sink-<name> [--config FILE] replay ...   put dead letters back on the delivery topic
//! ```
//!
//! Exit codes: 0 done, 1 failed (the message says why: bad credentials, unreachable target,
//! a fatal delivery error), 2 invalid configuration.

use std::ffi::OsString;
use std::fmt::Debug;
use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Subcommand};
use figment::Figment;
use figment::providers::Serialized;
use nectar_core::config::Validate;
use nectar_core::service::Cli;
use serde::de::DeserializeOwned;

use crate::config::SinkServiceConfig;
use crate::connector::Connector;
use crate::replay::ReplayArgs;

/// A sink binary: its name, defaults, and how to build its connector from its configuration.
pub trait Sink: 'static {
    /// The connector's `[target]` section.
    type Target: DeserializeOwned + Validate + Debug + Send + Sync + 'static;
    type Connector: Connector;
    /// The binary's name, e.g. `nectar-sink-postgres`.
    const BINARY: &'static str;
    /// One line for `--help`.
    const ABOUT: &'static str;
    /// The embedded `default.toml`.
    const DEFAULTS: &'static str;

    fn connector(config: &SinkServiceConfig<Self::Target>) -> anyhow::Result<Self::Connector>;

    /// Defaults derived from the configuration itself, as TOML, layered above
    /// [`Sink::DEFAULTS`] and below the operator's file and environment (the HTTP sink's
    /// vendor spec sets `[sink]` limits from the vendor's published quota). `Err` is a
    /// configuration error.
    fn derived_defaults(_config: &Figment) -> Result<Option<String>, String> {
        Ok(None)
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume the delivery topic and deliver (the default).
    Run,
    /// Validate the configuration and exit.
    CheckConfig,
    /// Check the target is reachable and the credentials valid, prepare it, and exit.
    Check,
    /// Re-publish chosen dead letters to the delivery topic.
    Replay(ReplayArgs),
}

/// Parse the command line, load the configuration and run the chosen command.
pub async fn main<S: Sink>() -> ExitCode {
    main_with::<S>(std::env::args_os().collect(), Vec::new()).await
}

/// [`main`] with the arguments given, and settings (`"target.vendor"` → value) that override
/// the configuration file and environment (a binary's own flags, such as `--target`).
pub async fn main_with<S: Sink>(args: Vec<OsString>, overrides: Vec<(String, String)>) -> ExitCode {
    nectar_core::shutdown::install();
    let matches = Cli::<Command>::command()
        .name(S::BINARY)
        .about(S::ABOUT)
        .mut_subcommand("replay", |replay| {
            replay.mut_arg("to", |to| to.help(crate::replay::TO_HELP))
        })
        .get_matches_from(args);
    let cli = match Cli::<Command>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let config: SinkServiceConfig<S::Target> = match load::<S>(cli.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", S::BINARY);
            return ExitCode::from(2);
        }
    };
    nectar_core::telemetry::init(&config.log);
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            println!("{}: configuration is valid", S::BINARY);
            Ok(())
        }
        Command::Check => check::<S>(&config).await,
        Command::Replay(args) => crate::replay::run(&config.kafka, &config.sink, &args)
            .await
            .map(|report| println!("{report}")),
        Command::Run => match S::connector(&config) {
            Ok(connector) => crate::runtime::run_service(config, connector).await,
            Err(e) => Err(e.context("cannot build the connector")),
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{}: {e:#}", S::BINARY);
            ExitCode::FAILURE
        }
    }
}

/// The configuration: the embedded defaults, those the configuration derives, the file, the
/// environment, then `overrides`.
pub fn load<S: Sink>(
    path: Option<&Path>,
    overrides: &[(String, String)],
) -> Result<SinkServiceConfig<S::Target>, String> {
    let with_overrides = |mut figment: Figment| {
        for (key, value) in overrides {
            figment = figment.merge(Serialized::default(key, value));
        }
        figment
    };
    let first = with_overrides(nectar_core::config::figment(S::DEFAULTS, path));
    let figment = match S::derived_defaults(&first).map_err(|e| format!("invalid configuration: {e}"))? {
        None => first,
        Some(derived) => with_overrides(nectar_core::config::figment_layers(&[S::DEFAULTS, &derived], path)),
    };
    nectar_core::config::from_figment(figment).map_err(|e| e.to_string())
}

async fn check<S: Sink>(config: &SinkServiceConfig<S::Target>) -> anyhow::Result<()> {
    let connector = S::connector(config)?;
    crate::runtime::start_check(&connector, &config.sink).await?;
    println!(
        "{}: {} is reachable and the credentials are valid",
        S::BINARY,
        connector.name()
    );
    Ok(())
}
