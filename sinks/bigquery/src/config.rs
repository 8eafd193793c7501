//! `[target]`: where the rows go and how the sink authenticates.

use std::path::PathBuf;

use nectar_core::Sensitive;
use nectar_core::config::Validate;
use serde::Deserialize;

/// BigQuery's documented `insertAll` limits
/// (<https://cloud.google.com/bigquery/quotas#streaming_inserts>): at most 50,000 rows per
/// request (500 recommended) and a 10 MB HTTP request.
pub const MAX_ROWS_PER_REQUEST: usize = 50_000;
pub const MAX_REQUEST_BYTES: usize = 10 * 1024 * 1024;

/// The `[target]` section of `nectar-sink-bigquery`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BigQueryConfig {
    /// The BigQuery REST endpoint. Override to reach a private endpoint or a test fake.
    #[serde(default = "default_api_url")]
    pub api_url: String,
    /// The Google Cloud project that holds the dataset.
    #[serde(default)]
    pub project: String,
    /// The dataset that holds the table (it must exist).
    #[serde(default)]
    pub dataset: String,
    /// The table the events are streamed into.
    #[serde(default = "default_table")]
    pub table: String,
    /// Path of a service-account key file (JSON, as the Cloud console downloads it).
    #[serde(default)]
    pub credentials_file: Option<PathBuf>,
    /// The same key file's contents, inline (e.g. from a secret in `NECTAR_TARGET__CREDENTIALS_JSON`).
    #[serde(default)]
    pub credentials_json: Option<Sensitive<String>>,
    /// OAuth scope the access token is requested for. `bigquery` lets the sink read and
    /// create the table; `bigquery.insertdata` only streams rows (then set
    /// `create_table = false` and create the table yourself).
    #[serde(default = "default_scope")]
    pub scope: String,
    /// Create the table at start when it does not exist, with the schema derived from
    /// `io.nectar.Event`.
    #[serde(default = "yes")]
    pub create_table: bool,
    /// A created table is partitioned by day on `occurred_at` and clustered by
    /// `workspace_id, event_type`.
    #[serde(default = "yes")]
    pub partition_by_day: bool,
    /// `skipInvalidRows`: insert the valid rows of a request even when some are invalid
    /// (the invalid ones are dead-lettered either way). With `false`, BigQuery inserts nothing
    /// from a request with an invalid row and the valid ones are sent again.
    #[serde(default = "yes")]
    pub skip_invalid_rows: bool,
    /// `ignoreUnknownValues`: drop values that have no column instead of refusing the row.
    #[serde(default)]
    pub ignore_unknown_values: bool,
    /// Rows per `insertAll` request (Google recommends at most 500; the limit is 50,000).
    #[serde(default = "default_max_rows")]
    pub max_rows_per_request: usize,
    /// Bytes per `insertAll` request body (BigQuery's limit is 10 MB); a larger batch is sent
    /// in several requests, and a single row over it is dead-lettered.
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
}

fn default_api_url() -> String {
    "https://bigquery.googleapis.com".into()
}
fn default_table() -> String {
    "events".into()
}
fn default_scope() -> String {
    "https://www.googleapis.com/auth/bigquery".into()
}
fn yes() -> bool {
    true
}
fn default_max_rows() -> usize {
    500
}
fn default_max_request_bytes() -> usize {
    // Under 10 MB whether Google counts 10^7 or 2^20 × 10 bytes.
    10_000_000
}

impl BigQueryConfig {
    /// `project:dataset.table`, as BigQuery names a table in its messages.
    pub fn table_name(&self) -> String {
        format!("{}:{}.{}", self.project, self.dataset, self.table)
    }
}

/// Project ids: lower-case letters, digits, `-`, and the `domain.com:` prefix of older
/// domain-scoped projects.
fn valid_project(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 100
        && p.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | ':'))
}

/// Dataset ids: letters, digits, underscores, at most 1,024.
fn valid_dataset(d: &str) -> bool {
    !d.is_empty() && d.len() <= 1024 && d.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Table ids: BigQuery allows more (Unicode letters, spaces), this sink takes letters, digits,
/// `_` and `-`, which need no escaping in a URL path.
fn valid_table(t: &str) -> bool {
    !t.is_empty() && t.len() <= 1024 && t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Validate for BigQueryConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        if !(self.api_url.starts_with("https://") || self.api_url.starts_with("http://")) {
            errors.push(format!("target.api_url: `{}` is not an http(s) URL", self.api_url));
        }
        if self.project.is_empty() {
            errors.push("target.project: required (the Google Cloud project that holds the dataset)".into());
        } else if !valid_project(&self.project) {
            errors.push(format!(
                "target.project: `{}` is not a Google Cloud project id",
                self.project
            ));
        }
        if self.dataset.is_empty() {
            errors.push("target.dataset: required (the BigQuery dataset that holds the table)".into());
        } else if !valid_dataset(&self.dataset) {
            errors.push(format!(
                "target.dataset: `{}` is not a dataset id (letters, digits and underscores)",
                self.dataset
            ));
        }
        if !valid_table(&self.table) {
            errors.push(format!(
                "target.table: `{}` is not a table id this sink takes (letters, digits, `_`, `-`)",
                self.table
            ));
        }
        match (&self.credentials_file, &self.credentials_json) {
            (None, None) => errors.push(
                "target.credentials_file: required (a service-account key file), or set target.credentials_json".into(),
            ),
            (Some(_), Some(_)) => {
                errors.push("target.credentials_file and target.credentials_json: set only one of them".into())
            }
            _ => {}
        }
        if self.scope.trim().is_empty() {
            errors.push("target.scope: must not be empty".into());
        }
        if self.max_rows_per_request == 0 || self.max_rows_per_request > MAX_ROWS_PER_REQUEST {
            errors.push(format!(
                "target.max_rows_per_request: must be between 1 and {MAX_ROWS_PER_REQUEST} (BigQuery's limit)"
            ));
        }
        if self.max_request_bytes < 1024 || self.max_request_bytes > MAX_REQUEST_BYTES {
            errors.push(format!(
                "target.max_request_bytes: must be between 1024 and {MAX_REQUEST_BYTES} (BigQuery's 10 MB limit)"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(toml_text: &str) -> BigQueryConfig {
        use figment::providers::{Format, Toml};
        figment::Figment::from(Toml::string(toml_text))
            .extract()
            .expect("parses")
    }

    fn errors(c: &BigQueryConfig) -> Vec<String> {
        let mut errors = Vec::new();
        c.validate(&mut errors);
        errors
    }

    #[test]
    fn a_complete_section_is_valid_and_defaults_follow_google_limits() {
        let c = config("project = \"acme-prod\"\ndataset = \"marketing\"\ncredentials_file = \"/k.json\"");
        assert!(errors(&c).is_empty(), "{:?}", errors(&c));
        assert_eq!(c.api_url, "https://bigquery.googleapis.com");
        assert_eq!(c.table, "events");
        assert_eq!(c.max_rows_per_request, 500);
        assert!(c.create_table && c.skip_invalid_rows && !c.ignore_unknown_values);
        assert_eq!(c.table_name(), "acme-prod:marketing.events");
    }

    #[test]
    fn every_error_names_its_key() {
        let c = config("api_url = \"ftp://x\"\ndataset = \"a-b\"\ntable = \"x/y\"\nmax_rows_per_request = 60000");
        let e = errors(&c);
        for key in [
            "target.api_url",
            "target.project",
            "target.dataset",
            "target.table",
            "target.credentials_file",
            "target.max_rows_per_request",
        ] {
            assert!(e.iter().any(|m| m.starts_with(key)), "{key} in {e:?}");
        }
        let both = config("project = \"p1\"\ndataset = \"d\"\ncredentials_file = \"/k\"\ncredentials_json = \"{}\"");
        assert!(errors(&both)[0].contains("only one"));
    }

    #[test]
    fn unknown_keys_are_refused() {
        use figment::providers::{Format, Toml};
        let r: Result<BigQueryConfig, _> = figment::Figment::from(Toml::string("projet = \"x\"")).extract();
        assert!(r.unwrap_err().to_string().contains("projet"));
    }
}
