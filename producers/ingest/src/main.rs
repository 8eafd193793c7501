//! `nectar-ingest` binary.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nectar_ingest::config::{DEFAULTS, ServiceConfig};

#[derive(Debug, Parser)]
#[command(
    name = "nectar-ingest",
    version,
    about = "Web forms, webhooks and app events in; Avro events on Kafka out."
)]
struct Cli {
    /// TOML configuration file; `NECTAR_*__*` environment variables override it.
    #[arg(long, short, env = "NECTAR_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API (the default).
    Serve,
    /// Validate the configuration and print it with secrets masked.
    CheckConfig,
    /// Register the raw event schemas in the registry and exit.
    RegisterSchemas,
}

#[tokio::main]
async fn main() -> ExitCode {
    nectar_core::shutdown::install();
    let cli = Cli::parse();
    let config: ServiceConfig = match nectar_core::config::load(DEFAULTS, cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("nectar-ingest: {e}");
            return ExitCode::from(2);
        }
    };
    nectar_core::telemetry::init(&config.log);
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => nectar_ingest::serve(config, nectar_core::shutdown::signal()).await,
        Command::CheckConfig => {
            println!("{config:#?}");
            Ok(())
        }
        Command::RegisterSchemas => register(&config).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("nectar-ingest: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn register(config: &ServiceConfig) -> anyhow::Result<()> {
    let producer = nectar_producer::NectarProducer::new(
        &config.kafka,
        &config.schema_registry,
        config.topics.clone(),
        "nectar-schemas",
    )?;
    producer.register_schemas().await?;
    println!("registered the raw event schemas");
    Ok(())
}
