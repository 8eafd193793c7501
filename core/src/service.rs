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
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::config::{AdminConfig, ConfigError, KafkaConfig, LogConfig, RegistryConfig, Validate};
use crate::processor::ProcessorConfig;
use crate::replay::{Destination, ReplayArgs};

/// A service's configuration: what `main` needs to know of it.
pub trait ServiceConfig: DeserializeOwned + Validate {
    fn log(&self) -> &LogConfig;
}

/// A processor's whole configuration: the sections every processor has, and its own
/// sections `S` (`[topics]`, its rules, ...).
///
/// `S` is a struct of sections, each of which denies unknown fields; `S` itself must not
/// (the shared sections are in the same file): [`load_processor_config`] refuses any section
/// that is neither shared nor one of `S`'s fields, by name.
#[derive(Debug, Clone)]
pub struct ProcessorServiceConfig<S> {
    pub kafka: KafkaConfig,
    pub schema_registry: RegistryConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    pub processor: ProcessorConfig,
    /// The processor's own sections.
    pub own: S,
}

/// The sections of [`ProcessorServiceConfig`] every processor has.
#[derive(Deserialize)]
struct SharedSections {
    kafka: KafkaConfig,
    schema_registry: RegistryConfig,
    admin: AdminConfig,
    #[serde(default)]
    log: LogConfig,
    processor: ProcessorConfig,
}

impl<S: Validate> Validate for ProcessorServiceConfig<S> {
    fn validate(&self, errors: &mut Vec<String>) {
        self.kafka.validate(errors);
        self.schema_registry.validate(errors);
        self.log.validate(errors);
        self.processor.validate(errors);
        self.own.validate(errors);
    }
}

/// Load and validate a processor's configuration (defaults, file, environment, as
/// [`crate::config::figment`] reads them). Two passes over one figment, so every error
/// keeps the key and the source figment names; then the top-level sections are checked
/// against the shared ones and `S`'s, so `[topic]` for `[topics]` is an error too.
pub fn load_processor_config<S: DeserializeOwned + Validate>(
    defaults: &str,
    path: Option<&Path>,
) -> Result<ProcessorServiceConfig<S>, ConfigError> {
    let figment = crate::config::figment(defaults, path);
    let parse = |e: figment::Error| ConfigError::Parse(Box::new(e));
    let sections: std::collections::BTreeMap<String, serde::de::IgnoredAny> = figment.extract().map_err(parse)?;
    let mut known: Vec<&str> = crate::config::struct_fields::<SharedSections>()
        .iter()
        .chain(crate::config::struct_fields::<S>())
        .copied()
        .collect();
    known.sort_unstable();
    let unknown: Vec<String> = sections
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| format!("{k}: unknown section, expected one of {}", known.join(", ")))
        .collect();
    if !unknown.is_empty() {
        return Err(ConfigError::Invalid(unknown));
    }
    let shared: SharedSections = figment.extract().map_err(parse)?;
    let own: S = figment.extract().map_err(parse)?;
    crate::config::validated(ProcessorServiceConfig {
        kafka: shared.kafka,
        schema_registry: shared.schema_registry,
        admin: shared.admin,
        log: shared.log,
        processor: shared.processor,
        own,
    })
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
pub async fn processor_main<S, F, Fut>(binary: Binary, run: F) -> ExitCode
where
    S: DeserializeOwned + Validate,
    F: FnOnce(ProcessorServiceConfig<S>) -> Fut,
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
    let config: ProcessorServiceConfig<S> = match load_processor_config(binary.defaults, cli.config.as_deref()) {
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
            crate::telemetry::init(&config.log);
            crate::replay::run(&config.kafka, &config.processor.dlq_topic, Destination::Origin, &args)
                .await
                .map(|report| println!("{report}"))
        }
        Command::Run => {
            crate::telemetry::init(&config.log);
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

#[cfg(test)]
// figment::Jail's closures return figment::Error, which is large by design.
#[allow(clippy::result_large_err)]
mod tests {
    use super::*;

    fn defaults() -> String {
        format!(
            "{}\n[processor]\n{}\n[topics]\ninput = \"in\"\n[rules]\nthreshold = 5\n",
            crate::config::tests::DEFAULTS,
            crate::processor::tests::SECTION
        )
    }

    #[derive(Debug, Deserialize)]
    struct Own {
        topics: Topics,
        #[serde(default)]
        rules: Rules,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Topics {
        input: String,
    }

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Rules {
        threshold: u32,
    }

    impl Validate for Own {
        fn validate(&self, errors: &mut Vec<String>) {
            if self.rules.threshold > 10 {
                errors.push("rules.threshold: at most 10".into());
            }
        }
    }

    fn load(file: &str, env: &[(&str, &str)]) -> Result<ProcessorServiceConfig<Own>, String> {
        let mut result = Err(String::new());
        figment::Jail::expect_with(|jail| {
            jail.clear_env();
            jail.create_file("nectar.toml", file)?;
            for (k, v) in env {
                jail.set_env(k, v);
            }
            result =
                load_processor_config::<Own>(&defaults(), Some(Path::new("nectar.toml"))).map_err(|e| e.to_string());
            Ok(())
        });
        result
    }

    #[test]
    fn shared_and_own_sections_load_from_one_file_and_the_environment() {
        let config = load(
            "[processor]\nmax_batch = 7\n[topics]\ninput = \"file\"\n",
            &[("NECTAR_RULES__THRESHOLD", "9"), ("NECTAR_PROCESSOR__INSTANCE_ID", "0")],
        )
        .expect("valid");
        assert_eq!(config.processor.max_batch, 7);
        assert_eq!(config.processor.instance_id.as_deref(), Some("0"));
        assert_eq!(config.own.topics.input, "file");
        assert_eq!(
            config.own.rules.threshold, 9,
            "an own section's number from the environment"
        );
        assert_eq!(config.kafka.bootstrap_servers, "127.0.0.1:9092");
    }

    #[test]
    fn an_unknown_section_is_refused_by_name_with_the_known_ones() {
        let err = load("[topic]\ninput = \"x\"\n", &[]).expect_err("typo");
        assert!(
            err.contains(
                "topic: unknown section, expected one of admin, kafka, log, processor, rules, schema_registry, topics"
            ),
            "{err}"
        );
    }

    #[test]
    fn unknown_keys_inside_shared_and_own_sections_are_refused_by_key() {
        let err = load("[processor]\nmax_batchs = 1\n", &[]).expect_err("typo");
        assert!(err.contains("max_batchs"), "{err}");
        let err = load("[rules]\nthreshold = 1\nthreshhold = 2\n", &[]).expect_err("typo");
        assert!(err.contains("threshhold"), "{err}");
    }

    #[test]
    fn shared_and_own_validation_report_every_problem() {
        let err = load("[processor]\nmax_batch = 0\n[rules]\nthreshold = 11\n", &[]).expect_err("invalid");
        assert!(err.contains("processor.max_batch"), "{err}");
        assert!(err.contains("rules.threshold: at most 10"), "{err}");
    }

    #[test]
    fn struct_fields_reads_the_sections_of_a_configuration_type() {
        assert_eq!(crate::config::struct_fields::<Own>(), ["topics", "rules"]);
        assert!(crate::config::struct_fields::<u32>().is_empty());
    }
}
