//! `[target]`: where the rows go and how events become rows.
//!
//! ```toml
//! [target]
//! url = "postgres://nectar:nectar@127.0.0.1:5432/nectar"
//! default_table = "nectar_events"
//!
//! [[target.tables]]
//! name = "form_submissions"
//! event_types = ["form.submitted", "lead.captured"]
//! columns = { email = "person.email", amount_minor = "commerce.amount_minor::bigint" }
//! ```
//!
//! A column is `"<path>"` (a `text` column) or `"<path>::<type>"`, the path being dotted
//! field names into the event as JSON (`envelope.workspace_id`, `form.fields.company`).
//! Every table also has the standard columns (see [`STANDARD_COLUMNS`]).

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

use nectar_core::Sensitive;
use nectar_core::config::Validate;
use serde::Deserialize;
use sqlx::postgres::PgConnectOptions;

use crate::mapping::ColumnSpec;

/// Columns every table has, in this order: `event_id text PRIMARY KEY`, `event_type text`,
/// `occurred_at timestamptz`, `payload jsonb` (the whole event), `delivered_at timestamptz
/// DEFAULT now()`. Mapped columns cannot reuse these names.
pub const STANDARD_COLUMNS: [&str; 5] = ["event_id", "event_type", "occurred_at", "payload", "delivered_at"];

/// The `[target]` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// `postgres://user:password@host:port/database[?sslmode=require&...]`.
    #[serde(default = "default_url")]
    pub url: Sensitive<String>,
    /// Schema of every table, the offsets table included; created when missing (with
    /// `create_tables`). Default: the connection's `search_path` (usually `public`).
    #[serde(default)]
    pub schema: Option<String>,
    /// Create missing tables at start. Existing tables are never altered: a missing column
    /// stops the sink at start with the `ALTER TABLE` to run.
    #[serde(default = "yes")]
    pub create_tables: bool,
    /// Table of every event type no `[[target.tables]]` entry lists (standard columns only).
    /// Empty: no such table, and an unmapped event is dead-lettered (never skipped), so it
    /// can be replayed once a table maps it.
    #[serde(default = "default_default_table")]
    pub default_table: String,
    /// Where the consumed positions are stored with the rows.
    #[serde(default = "default_offsets_table")]
    pub offsets_table: String,
    /// Server-side limit of one statement (PostgreSQL `statement_timeout`); keep it below
    /// `sink.request_timeout_ms` so the server cancels a stuck statement before the runtime
    /// abandons the call. 0: no limit.
    #[serde(default = "default_statement_timeout_ms")]
    pub statement_timeout_ms: u64,
    /// How long to wait for a connection (connect, or a free one in the pool).
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// `application_name` of the sink's sessions (visible in `pg_stat_activity`).
    #[serde(default = "default_application_name")]
    pub application_name: String,
    /// Tables for chosen event types, each with its own mapped columns.
    #[serde(default)]
    pub tables: Vec<TableConfig>,
}

/// One `[[target.tables]]` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    pub name: String,
    /// The `envelope.event_type`s whose events go to this table (each type in one table).
    pub event_types: Vec<String>,
    /// Column name → `"<path>"` or `"<path>::<type>"`; types: `text` (default), `bigint`,
    /// `double precision`, `boolean`, `timestamptz` (from epoch milliseconds), `jsonb`.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

fn default_url() -> Sensitive<String> {
    Sensitive::new("postgres://nectar:nectar@127.0.0.1:5432/nectar".into())
}
fn yes() -> bool {
    true
}
fn default_default_table() -> String {
    "nectar_events".into()
}
fn default_offsets_table() -> String {
    "nectar_sink_offsets".into()
}
fn default_statement_timeout_ms() -> u64 {
    20_000
}
fn default_connect_timeout_ms() -> u64 {
    10_000
}
fn default_application_name() -> String {
    "nectar-sink-postgres".into()
}

impl PostgresConfig {
    /// The defaults with `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Sensitive::new(url.into()),
            schema: None,
            create_tables: true,
            default_table: default_default_table(),
            offsets_table: default_offsets_table(),
            statement_timeout_ms: default_statement_timeout_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            application_name: default_application_name(),
            tables: Vec::new(),
        }
    }

    /// The connection options: the URL plus `application_name` and `statement_timeout`.
    pub fn connect_options(&self) -> Result<PgConnectOptions, String> {
        // The error must not echo the URL: it holds the password.
        let options = PgConnectOptions::from_str(self.url.expose())
            .map_err(|e| format!("not a valid postgres:// URL ({})", error_kind(&e)))?;
        let options = options.application_name(&self.application_name);
        Ok(if self.statement_timeout_ms > 0 {
            options.options([("statement_timeout", self.statement_timeout_ms)])
        } else {
            options
        })
    }
}

fn error_kind(e: &sqlx::Error) -> &'static str {
    match e {
        sqlx::Error::Configuration(_) => "bad syntax or an unknown parameter",
        _ => "cannot be parsed",
    }
}

/// Whether `name` is a lower-case SQL identifier: `[a-z_][a-z0-9_]*`, at most 63 bytes
/// (PostgreSQL's limit). Names are quoted in every statement; keeping them lower case means
/// they also work unquoted in the operator's own SQL.
pub fn is_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    name.len() <= 63
        && chars.next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

const IDENTIFIER_RULE: &str = "must be a lower-case SQL identifier ([a-z_][a-z0-9_]*, at most 63 characters)";

impl Validate for PostgresConfig {
    fn validate(&self, errors: &mut Vec<String>) {
        let url = self.url.expose();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            errors.push("target.url: must start with postgres:// or postgresql://".into());
        } else if let Err(e) = self.connect_options() {
            errors.push(format!("target.url: {e}"));
        }
        if let Some(schema) = &self.schema
            && !is_identifier(schema)
        {
            errors.push(format!("target.schema: `{schema}` {IDENTIFIER_RULE}"));
        }
        if !self.default_table.is_empty() && !is_identifier(&self.default_table) {
            errors.push(format!(
                "target.default_table: `{}` {IDENTIFIER_RULE}, or empty for none",
                self.default_table
            ));
        }
        if !is_identifier(&self.offsets_table) {
            errors.push(format!(
                "target.offsets_table: `{}` {IDENTIFIER_RULE}",
                self.offsets_table
            ));
        }
        if self.connect_timeout_ms == 0 {
            errors.push("target.connect_timeout_ms: must be at least 1".into());
        }
        if self.application_name.is_empty() || self.application_name.len() > 63 || !self.application_name.is_ascii() {
            errors.push("target.application_name: must be 1 to 63 ASCII characters".into());
        }

        let mut table_names: BTreeSet<&str> = BTreeSet::from([self.offsets_table.as_str()]);
        if !self.default_table.is_empty() {
            if self.default_table == self.offsets_table {
                errors.push("target.default_table: must differ from target.offsets_table".into());
            }
            table_names.insert(&self.default_table);
        }
        let mut event_types: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, table) in self.tables.iter().enumerate() {
            let key = format!("target.tables[{i}]");
            if !is_identifier(&table.name) {
                errors.push(format!("{key}.name: `{}` {IDENTIFIER_RULE}", table.name));
            } else if !table_names.insert(&table.name) {
                errors.push(format!(
                    "{key}.name: `{}` is already used (by another table, target.default_table or target.offsets_table)",
                    table.name
                ));
            }
            if table.event_types.is_empty() {
                errors.push(format!("{key}.event_types: must list at least one event type"));
            }
            for event_type in &table.event_types {
                if let Some(first) = event_types.insert(event_type, i)
                    && first != i
                {
                    errors.push(format!(
                        "{key}.event_types: `{event_type}` is already mapped by target.tables[{first}] (an event type goes to one table)"
                    ));
                }
            }
            for (column, spec) in &table.columns {
                let key = format!("{key}.columns.{column}");
                if !is_identifier(column) {
                    errors.push(format!("{key}: the column name {IDENTIFIER_RULE}"));
                } else if STANDARD_COLUMNS.contains(&column.as_str()) {
                    errors.push(format!(
                        "{key}: `{column}` is a standard column every table has ({})",
                        STANDARD_COLUMNS.join(", ")
                    ));
                }
                if let Err(e) = ColumnSpec::parse(spec) {
                    errors.push(format!("{key}: {e}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(config: &PostgresConfig) -> Vec<String> {
        let mut errors = Vec::new();
        config.validate(&mut errors);
        errors
    }

    fn table(name: &str, types: &[&str], columns: &[(&str, &str)]) -> TableConfig {
        TableConfig {
            name: name.into(),
            event_types: types.iter().map(|t| (*t).to_owned()).collect(),
            columns: columns
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }

    #[test]
    fn defaults_are_valid() {
        let config = PostgresConfig::new("postgres://nectar:nectar@127.0.0.1:5432/nectar");
        assert_eq!(errors(&config), Vec::<String>::new());
    }

    #[test]
    fn every_error_names_its_key() {
        let mut config = PostgresConfig::new("mysql://x");
        config.schema = Some("Bad-Schema".into());
        config.offsets_table = "nectar_events".into();
        config.tables = vec![
            table("form_submissions", &["form.submitted"], &[("email", "person.email")]),
            table(
                "form_submissions",
                &["form.submitted"],
                &[
                    ("occurred_at", "envelope.occurred_at::timestamptz"),
                    ("amount", "x::money"),
                ],
            ),
            table("empty", &[], &[("Bad Name", "")]),
        ];
        let text = errors(&config).join("\n");
        for expected in [
            "target.url: must start with postgres://",
            "target.schema: `Bad-Schema`",
            "target.default_table: must differ from target.offsets_table",
            "target.tables[1].name: `form_submissions` is already used",
            "target.tables[1].event_types: `form.submitted` is already mapped by target.tables[0]",
            "target.tables[1].columns.occurred_at: `occurred_at` is a standard column",
            "target.tables[1].columns.amount: unknown type `money`",
            "target.tables[2].event_types: must list at least one event type",
            "target.tables[2].columns.Bad Name: the column name must be a lower-case SQL identifier",
            "target.tables[2].columns.Bad Name: the path is empty",
        ] {
            assert!(text.contains(expected), "missing `{expected}` in:\n{text}");
        }
    }

    #[test]
    fn url_errors_never_echo_the_password() {
        let config = PostgresConfig::new("postgres://nectar:hunter2@127.0.0.1:notaport/nectar");
        let text = errors(&config).join("\n");
        assert!(text.contains("target.url"), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn identifiers_are_lower_case_sql_names() {
        assert!(is_identifier("form_submissions"));
        assert!(is_identifier("_t1"));
        assert!(!is_identifier("1t"));
        assert!(!is_identifier("Forms"));
        assert!(!is_identifier("a\"b"));
        assert!(!is_identifier(""));
        assert!(!is_identifier(&"a".repeat(64)));
    }
}
