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

use std::fmt::Debug;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Subcommand};
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
    nectar_core::shutdown::install();
    let matches = Cli::<Command>::command()
        .name(S::BINARY)
        .about(S::ABOUT)
        .mut_subcommand("replay", |replay| {
            replay.mut_arg("to", |to| to.help(crate::replay::TO_HELP))
        })
        .get_matches();
    let cli = match Cli::<Command>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let config: SinkServiceConfig<S::Target> = match nectar_core::config::load(S::DEFAULTS, cli.config.as_deref()) {
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
