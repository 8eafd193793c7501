//! The `main` every processor binary shares: load the configuration (exit 2 with every
//! problem named by its key), set up logging, run, and exit non-zero with the error so an
//! orchestrator restarts the service.

use std::future::Future;
use std::path::Path;
use std::process::ExitCode;

use serde::de::DeserializeOwned;

use crate::config::{LogConfig, Validate};

/// A service's configuration: what `main` needs to know of it.
pub trait ServiceConfig: DeserializeOwned + Validate {
    fn log(&self) -> &LogConfig;
}

/// Load `defaults` + `config_path` + `NECTAR_*` into `C`, then `run` it.
pub async fn main<C, F, Fut>(name: &str, defaults: &str, config_path: Option<&Path>, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let config: C = match crate::config::load(defaults, config_path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{name}: {e}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(config.log());
    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("{name}: {e:#}");
            ExitCode::FAILURE
        }
    }
}
