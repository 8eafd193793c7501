//! The `main` every processor binary shares:
//!
//! ```text
//! nectar-<name> [--config FILE] [run]          consume, process, produce (the default)
//! nectar-<name> [--config FILE] check-config   validate the configuration and exit
//! nectar-<name> [--config FILE] replay ...     put dead letters back on the topics they came from
//! ```
//!
//! Every command loads the configuration first: exit 2 with every problem named by its key.
//! Otherwise 0 when done, 1 when it failed (the message says why), so an orchestrator
//! restarts a service that stopped.

use std::future::Future;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::de::DeserializeOwned;

use crate::config::{KafkaConfig, LogConfig, Validate};
use crate::processor::ProcessorConfig;
use crate::replay::{Destination, ReplayArgs};

/// A service's configuration: what `main` needs to know of it.
pub trait ServiceConfig: DeserializeOwned + Validate {
    fn log(&self) -> &LogConfig;
}

/// A processor's configuration: `replay` reads `processor.dlq_topic` with `[kafka]`.
pub trait ProcessorServiceConfig: ServiceConfig {
    fn kafka(&self) -> &KafkaConfig;
    fn processor(&self) -> &ProcessorConfig;
}

/// A processor binary: its name, `--help` line and embedded `default.toml`.
#[derive(Debug, Clone, Copy)]
pub struct Binary {
    /// e.g. `nectar-normalize`.
    pub name: &'static str,
    pub about: &'static str,
    pub defaults: &'static str,
}

/// The help of `--to` in a processor's `replay`.
const TO_HELP: &str = "Produce to this topic instead of each dead letter's origin topic (its nectar-dlq-topic header)";

/// The command line of a Nectar service: `[--config FILE] [COMMAND]`, with the service's
/// own commands (processors here, sinks in `nectar_sink::service`).
#[derive(Debug, Parser)]
pub struct Cli<C: Subcommand> {
    /// Configuration file (TOML), merged over the defaults; `NECTAR_<SECTION>__<KEY>`
    /// variables override both.
    #[arg(long, short, env = "NECTAR_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Option<C>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Consume, process and produce, exactly once (the default).
    Run,
    /// Validate the configuration and exit.
    CheckConfig,
    /// Re-publish chosen dead letters to the topics they came from.
    Replay(ReplayArgs),
}

/// Parse the command line, load the configuration and run the chosen command; `run` is the
/// processor itself.
pub async fn processor_main<C, F, Fut>(binary: Binary, run: F) -> ExitCode
where
    C: ProcessorServiceConfig,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    crate::shutdown::install();
    let matches = Cli::<Command>::command()
        .name(binary.name)
        .about(binary.about)
        .version(env!("CARGO_PKG_VERSION"))
        .mut_subcommand("replay", |replay| replay.mut_arg("to", |to| to.help(TO_HELP)))
        .get_matches();
    let cli = match Cli::<Command>::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    let config: C = match crate::config::load(binary.defaults, cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", binary.name);
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            println!("{}: configuration is valid", binary.name);
            Ok(())
        }
        Command::Replay(args) => {
            crate::telemetry::init(config.log());
            crate::replay::run(
                config.kafka(),
                &config.processor().dlq_topic,
                Destination::Origin,
                &args,
            )
            .await
            .map(|report| println!("{report}"))
        }
        Command::Run => {
            crate::telemetry::init(config.log());
            run(config).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{}: {e:#}", binary.name);
            ExitCode::FAILURE
        }
    }
}
