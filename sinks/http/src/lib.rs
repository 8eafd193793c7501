//! `nectar-sink-http`: one sink for every HTTP API that a vendor spec describes.
//!
//! A vendor spec (TOML, [`spec::Spec`]) says what differs between HTTP targets: the settings an
//! operator supplies, the auth, the requests (templates, encodings, batching, chained steps),
//! where the idempotency key goes, how answers read (an ordered rule table with per-event
//! results), the limits and the start check. The built-in specs are `vendors/*.toml`,
//! embedded; `target.specs_dir` adds more without code. Deploy one instance per target
//! (`target.vendor = "discord"` or `--target discord`): each is its own consumer group, rate
//! limiter and dead-letter topic.
//!
//! Files: [`spec`] (the format), [`target`] (the `[target]` section and the spec catalogue),
//! [`answer`] (reading answers), [`connector`] (the interpreter). `README.md` documents the
//! format field by field and walks through adding a vendor.

pub mod answer;
pub mod connector;
pub mod spec;
pub mod target;

use std::time::Duration;

use figment::Figment;
use nectar_sink::SinkServiceConfig;

pub use connector::HttpConnector;
pub use spec::Spec;
pub use target::HttpTarget;

/// The HTTP sink binary.
#[derive(Debug)]
pub struct HttpSink;

impl nectar_sink::Sink for HttpSink {
    type Target = HttpTarget;
    type Connector = HttpConnector;
    const BINARY: &'static str = "nectar-sink-http";
    const ABOUT: &'static str = "Nectar sink: delivers events to an HTTP API described by a vendor spec";
    const DEFAULTS: &'static str = include_str!("../default.toml");

    fn connector(config: &SinkServiceConfig<HttpTarget>) -> anyhow::Result<HttpConnector> {
        let resolved = config
            .target
            .resolve()
            .map_err(|e| anyhow::anyhow!("{}", e.join("; ")))?;
        HttpConnector::new(
            &config.sink.name,
            resolved,
            Duration::from_millis(config.sink.request_timeout_ms),
        )
    }

    /// The vendor's name as the sink's name (so topics default to `nectar.deliver.<vendor>`)
    /// and its published limits as the `[sink]` defaults.
    fn derived_defaults(config: &Figment) -> Result<Option<String>, String> {
        let Ok(target) = config.extract_inner::<HttpTarget>("target") else {
            return Ok(None);
        };
        let Ok((spec, _)) = target.spec() else {
            return Ok(None);
        };
        Ok(Some(sink_defaults(&spec)))
    }
}

/// The `[sink]` defaults a spec implies, as TOML.
pub fn sink_defaults(spec: &Spec) -> String {
    let mut toml = format!("[sink]\nname = \"{}\"\n", spec.name);
    if let Some(c) = spec.limits.concurrency {
        toml.push_str(&format!("concurrency = {c}\n"));
    }
    if let Some(r) = spec.limits.rate_per_second {
        toml.push_str(&format!("rate_limit_per_second = {r:?}\n"));
    }
    if let Some(b) = spec.limits.burst {
        toml.push_str(&format!("rate_limit_burst = {b}\n"));
    }
    if spec.batched() {
        toml.push_str(&format!("max_batch = {}\n", spec.limits.max_items.max(100)));
    }
    toml
}

/// Check a spec file offline: it parses, validates, and every template compiles and renders
/// on a sample event with placeholder settings. `Ok` is a one-line summary.
pub fn check_spec(path: &std::path::Path) -> Result<String, String> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {origin}: {e}"))?;
    let spec = Spec::parse(&origin, &text)?;
    let settings: serde_json::Map<String, serde_json::Value> = spec
        .settings
        .iter()
        .map(|(name, s)| {
            let placeholder = match s.kind {
                spec::SettingType::Url => "https://vendor.invalid".into(),
                spec::SettingType::Integer => 1.into(),
                spec::SettingType::List => serde_json::json!(["placeholder"]),
                // Also a valid signing secret (`whsec_` + base64 of 24 bytes).
                spec::SettingType::Secret => "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
                _ => "placeholder".into(),
            };
            (name.clone(), s.default.clone().unwrap_or(placeholder))
        })
        .collect();
    let resolved = target::Resolved {
        spec: spec.clone(),
        origin: origin.clone(),
        settings: nectar_core::Sensitive::new(settings),
    };
    // A JWT spec needs a real key to build; check the templates of the rest.
    match HttpConnector::new("check", resolved, Duration::from_secs(1)) {
        Ok(connector) => connector.check_templates().map_err(|e| e.to_string())?,
        Err(e) if e.to_string().contains("auth.private_key") => {}
        Err(e) => return Err(format!("{e:#}")),
    }
    Ok(format!(
        "{origin}: vendor `{}` is valid ({} setting(s), {} request step(s), {}, {:?})",
        spec.name,
        spec.settings.len(),
        spec.request.len(),
        if spec.batched() {
            format!("batches of up to {}", spec.limits.max_items)
        } else {
            "one event per request".to_owned()
        },
        spec.guarantee.kind
    ))
}

/// The JSON Schema of the spec format (committed as `spec.schema.json`).
pub fn spec_schema() -> String {
    let schema = schemars::schema_for!(Spec);
    serde_json::to_string_pretty(&schema).expect("a schema is JSON") + "\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_committed_json_schema_is_current() {
        let committed = include_str!("../spec.schema.json");
        assert!(
            committed == spec_schema(),
            "spec.schema.json is stale: run `cargo run -p nectar-sink-http -- spec-schema > sinks/http/spec.schema.json`"
        );
    }

    #[test]
    fn every_built_in_spec_passes_check_spec() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("vendors");
        for (file, _) in target::BUILT_IN {
            check_spec(&dir.join(file)).unwrap_or_else(|e| panic!("{e}"));
        }
    }
}
