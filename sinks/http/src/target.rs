//! The `[target]` section: which vendor spec (built in, or a file), and the spec's settings.
//!
//! ```toml
//! [target]
//! vendor = "discord"            # a built-in spec, or one in specs_dir
//! # spec_file = "/etc/nectar/acme.toml"
//! # specs_dir = "/etc/nectar/vendors"
//! webhook_url = "https://discord.com/api/webhooks/…"   # the spec's settings
//! ```
//!
//! Every other key must be a setting of the spec; errors name `target.<key>` and the spec.

use std::collections::BTreeMap;
use std::path::PathBuf;

use nectar_core::Sensitive;
use nectar_core::config::Validate;
use serde::Deserialize;
use serde_json::Value;

use crate::spec::{SettingType, Spec};

/// The built-in specs, embedded: `(file name, text)`.
pub const BUILT_IN: &[(&str, &str)] = &[
    ("amplitude.toml", include_str!("../vendors/amplitude.toml")),
    ("discord.toml", include_str!("../vendors/discord.toml")),
    ("ga4.toml", include_str!("../vendors/ga4.toml")),
    ("kit.toml", include_str!("../vendors/kit.toml")),
    ("mailchimp.toml", include_str!("../vendors/mailchimp.toml")),
    ("mixpanel.toml", include_str!("../vendors/mixpanel.toml")),
    ("salesforce.toml", include_str!("../vendors/salesforce.toml")),
    ("sendgrid.toml", include_str!("../vendors/sendgrid.toml")),
    ("teams.toml", include_str!("../vendors/teams.toml")),
    ("telegram.toml", include_str!("../vendors/telegram.toml")),
    ("webhook.toml", include_str!("../vendors/webhook.toml")),
];

#[derive(Debug, Clone, Deserialize)]
pub struct HttpTarget {
    /// The vendor: a built-in spec's name, or a spec in `specs_dir`.
    #[serde(default)]
    pub vendor: Option<String>,
    /// A spec file to use instead of a named vendor.
    #[serde(default)]
    pub spec_file: Option<PathBuf>,
    /// A directory of more specs (`<name>.toml`), looked up before the built-in ones.
    #[serde(default)]
    pub specs_dir: Option<PathBuf>,
    /// The spec's settings, as given.
    #[serde(flatten)]
    pub values: BTreeMap<String, Value>,
}

/// A spec with the operator's settings checked against it.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub spec: Spec,
    /// Where the spec came from (`built-in vendors/discord.toml`, a path).
    pub origin: String,
    /// `settings` for templates: every declared setting, secrets included.
    pub settings: Sensitive<serde_json::Map<String, Value>>,
}

impl HttpTarget {
    /// Load the spec this target names.
    pub fn spec(&self) -> Result<(Spec, String), String> {
        if let Some(path) = &self.spec_file {
            let origin = path.display().to_string();
            let text =
                std::fs::read_to_string(path).map_err(|e| format!("target.spec_file: cannot read {origin}: {e}"))?;
            return Spec::parse(&origin, &text).map(|s| (s, origin));
        }
        let Some(vendor) = &self.vendor else {
            return Err(format!(
                "target.vendor: required (or target.spec_file); built-in vendors: {}",
                built_in_names().join(", ")
            ));
        };
        if let Some(dir) = &self.specs_dir {
            let path = dir.join(format!("{vendor}.toml"));
            if path.exists() {
                let origin = path.display().to_string();
                let text = std::fs::read_to_string(&path).map_err(|e| format!("cannot read {origin}: {e}"))?;
                return Spec::parse(&origin, &text).map(|s| (s, origin));
            }
        }
        let file = format!("{vendor}.toml");
        let (_, text) = BUILT_IN.iter().find(|(f, _)| *f == file).ok_or_else(|| {
            format!(
                "target.vendor: no vendor `{vendor}`{}; built-in vendors: {}",
                self.specs_dir
                    .as_ref()
                    .map(|d| format!(" in {} or built in", d.display()))
                    .unwrap_or_default(),
                built_in_names().join(", ")
            )
        })?;
        let origin = format!("built-in vendors/{file}");
        Spec::parse(&origin, text).map(|s| (s, origin))
    }

    /// The spec and the settings, checked: unknown keys, missing required settings, types.
    pub fn resolve(&self) -> Result<Resolved, Vec<String>> {
        let (spec, origin) = self.spec().map_err(|e| vec![e])?;
        let mut errors = Vec::new();
        let mut settings = serde_json::Map::new();
        for key in self.values.keys() {
            if !spec.settings.contains_key(key) {
                let known: Vec<&str> = spec.settings.keys().map(String::as_str).collect();
                errors.push(format!(
                    "target.{key}: not a setting of vendor `{}` ({origin}); its settings: {}",
                    spec.name,
                    known.join(", ")
                ));
            }
        }
        for (name, setting) in &spec.settings {
            let value = self.values.get(name).or(setting.default.as_ref());
            let Some(value) = value else {
                if setting.required {
                    errors.push(format!(
                        "target.{name}: required by vendor `{}` ({origin}): {}",
                        spec.name, setting.doc
                    ));
                }
                settings.insert(name.clone(), Value::Null);
                continue;
            };
            match typed(setting.kind, value) {
                Ok(v) => {
                    settings.insert(name.clone(), v);
                }
                Err(e) => errors.push(format!("target.{name}: {e}")),
            }
        }
        if errors.is_empty() {
            Ok(Resolved {
                spec,
                origin,
                settings: Sensitive::new(settings),
            })
        } else {
            Err(errors)
        }
    }
}

fn built_in_names() -> Vec<&'static str> {
    BUILT_IN.iter().map(|(f, _)| f.trim_end_matches(".toml")).collect()
}

/// A setting's value in its declared type (environment variables arrive as strings).
fn typed(kind: SettingType, value: &Value) -> Result<Value, String> {
    let text = || match value {
        Value::String(s) => Ok(s.clone()),
        Value::Number(n) => Ok(n.to_string()),
        Value::Bool(b) => Ok(b.to_string()),
        _ => Err(format!("expected a string, got {value}")),
    };
    match kind {
        SettingType::String | SettingType::Secret => Ok(Value::String(text()?)),
        SettingType::Url => {
            let s = text()?;
            let url = reqwest::Url::parse(&s).map_err(|e| format!("not a URL: {e}"))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err("not an http(s) URL".into());
            }
            Ok(Value::String(s.trim_end_matches('/').to_owned()))
        }
        SettingType::Integer => match value {
            Value::Number(n) if n.is_i64() => Ok(value.clone()),
            _ => text()?
                .trim()
                .parse::<i64>()
                .map(Value::from)
                .map_err(|_| format!("expected an integer, got {value}")),
        },
        SettingType::List => match value {
            Value::Array(items) => items
                .iter()
                .map(|v| v.as_str().map(|s| Value::String(s.to_owned())))
                .collect::<Option<Vec<_>>>()
                .map(Value::Array)
                .ok_or_else(|| "expected a list of strings".to_owned()),
            _ => Ok(Value::Array(
                text()?
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect(),
            )),
        },
    }
}

impl Validate for HttpTarget {
    fn validate(&self, errors: &mut Vec<String>) {
        if self.vendor.is_some() && self.spec_file.is_some() {
            errors.push("target.spec_file: give target.vendor or target.spec_file, not both".into());
        }
        if let Err(e) = self.resolve() {
            errors.extend(e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(vendor: &str, values: Value) -> HttpTarget {
        HttpTarget {
            vendor: Some(vendor.into()),
            spec_file: None,
            specs_dir: None,
            values: serde_json::from_value(values).unwrap(),
        }
    }

    #[test]
    fn every_built_in_spec_is_valid() {
        for (file, text) in BUILT_IN {
            let spec = Spec::parse(file, text).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(format!("{}.toml", spec.name), *file);
        }
    }

    #[test]
    fn unknown_and_missing_settings_are_named() {
        let mut errors = Vec::new();
        target("discord", serde_json::json!({"webhook": "x"})).validate(&mut errors);
        let text = errors.join("\n");
        assert!(
            text.contains("target.webhook: not a setting of vendor `discord`"),
            "{text}"
        );
        assert!(
            text.contains("target.webhook_url: required by vendor `discord`"),
            "{text}"
        );
    }

    #[test]
    fn an_unknown_vendor_lists_the_built_in_ones() {
        let err = target("nope", serde_json::json!({})).spec().unwrap_err();
        assert!(err.contains("no vendor `nope`") && err.contains("discord"), "{err}");
    }

    #[test]
    fn settings_take_their_types_from_strings() {
        assert_eq!(typed(SettingType::Integer, &"42".into()).unwrap(), 42);
        assert_eq!(
            typed(SettingType::List, &"a, b".into()).unwrap(),
            serde_json::json!(["a", "b"])
        );
        assert_eq!(
            typed(SettingType::Url, &"https://x.test/api/".into()).unwrap(),
            "https://x.test/api"
        );
        assert!(typed(SettingType::Url, &"ftp://x".into()).is_err());
    }
}
