//! How events become rows: which table an event type goes to, what each mapped column holds,
//! and the statements that write a whole batch at once.
//!
//! A batch is written with one `INSERT ... SELECT ... FROM UNNEST($1::text[], ...)` per table:
//! one array parameter per column, whatever the number of rows, so the statement is prepared
//! once per connection and a batch of 1000 rows is one round trip. `ON CONFLICT (event_id) DO
//! NOTHING` makes a redelivered event change nothing.
//!
//! Values are converted here, not by the server, so an event whose field cannot be the
//! column's type is rejected with a reason that names the column and the path.
//!
//! A GDPR erasure request ([`ERASURE`]) becomes an [`Erasure`]: a `DELETE` from every table
//! of the rows whose payload's `envelope.workspace_id` and `envelope.lead_key` are the
//! lead's, matched by an expression index every table gets ([`Table::lead_index_sql`]). The
//! request itself is written as a row of its table with the envelope only (no person, form,
//! commerce, ... part). [`Rows::steps`] orders the inserts and deletes of a batch so that the
//! rows of the events before an erasure are deleted and those after it are kept.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;

use nectar_core::events::Event;
use serde_json::Value;

use crate::config::{PostgresConfig, STANDARD_COLUMNS};

/// The SQL types a mapped column can have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqlType {
    Text,
    BigInt,
    Double,
    Boolean,
    /// From epoch milliseconds (`envelope.occurred_at`, `envelope.received_at`).
    Timestamptz,
    Jsonb,
}

impl SqlType {
    /// The names accepted after `::`, canonical first.
    const NAMES: [(&'static str, SqlType); 11] = [
        ("text", SqlType::Text),
        ("bigint", SqlType::BigInt),
        ("double precision", SqlType::Double),
        ("boolean", SqlType::Boolean),
        ("timestamptz", SqlType::Timestamptz),
        ("jsonb", SqlType::Jsonb),
        ("int8", SqlType::BigInt),
        ("float8", SqlType::Double),
        ("bool", SqlType::Boolean),
        ("timestamp with time zone", SqlType::Timestamptz),
        ("varchar", SqlType::Text),
    ];

    fn parse(name: &str) -> Option<Self> {
        let name = name.trim().to_ascii_lowercase();
        let name = name.split_whitespace().collect::<Vec<_>>().join(" ");
        Self::NAMES.iter().find(|(n, _)| *n == name).map(|(_, t)| *t)
    }

    /// The column type in `CREATE TABLE`.
    pub fn ddl(self) -> &'static str {
        match self {
            SqlType::Text => "text",
            SqlType::BigInt => "bigint",
            SqlType::Double => "double precision",
            SqlType::Boolean => "boolean",
            SqlType::Timestamptz => "timestamptz",
            SqlType::Jsonb => "jsonb",
        }
    }

    /// The array type the values are bound as.
    fn array(self) -> &'static str {
        match self {
            SqlType::Text | SqlType::Jsonb => "text[]",
            SqlType::BigInt | SqlType::Timestamptz => "int8[]",
            SqlType::Double => "float8[]",
            SqlType::Boolean => "bool[]",
        }
    }

    /// The expression turning the unnested value `v` into the column's type.
    fn select(self, v: &str) -> String {
        match self {
            SqlType::Text | SqlType::BigInt | SqlType::Double | SqlType::Boolean => v.to_owned(),
            SqlType::Timestamptz => format!("timestamptz 'epoch' + {v} * interval '1 millisecond'"),
            SqlType::Jsonb => format!("{v}::jsonb"),
        }
    }
}

impl fmt::Display for SqlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.ddl())
    }
}

/// A parsed column: `"<path>"` or `"<path>::<type>"`.
#[derive(Debug, Clone, PartialEq)]
pub struct ColumnSpec {
    pub path: Vec<String>,
    pub sql_type: SqlType,
}

impl ColumnSpec {
    pub fn parse(spec: &str) -> Result<Self, String> {
        let (path, sql_type) = match spec.split_once("::") {
            Some((path, ty)) => (
                path,
                SqlType::parse(ty).ok_or_else(|| {
                    let names: Vec<_> = SqlType::NAMES[..6].iter().map(|(n, _)| *n).collect();
                    format!("unknown type `{}`; one of {}", ty.trim(), names.join(", "))
                })?,
            ),
            None => (spec, SqlType::Text),
        };
        let path = path.trim();
        if path.is_empty() {
            return Err("the path is empty; write `<path>` or `<path>::<type>`, e.g. `person.email`".into());
        }
        let segments: Vec<String> = path.split('.').map(str::to_owned).collect();
        if segments.iter().any(String::is_empty) {
            return Err(format!("`{path}` has an empty segment; paths are dotted field names"));
        }
        Ok(Self {
            path: segments,
            sql_type,
        })
    }
}

/// A mapped column of a table.
#[derive(Debug, Clone)]
pub struct Column {
    pub name: String,
    pub spec: ColumnSpec,
}

pub use nectar_core::events::ERASURE;

/// The expressions an erasure matches rows by: the envelope fields of the JSONB payload,
/// which every table has, whatever its mapped columns (and however old its rows).
const LEAD_EXPRESSIONS: &str = "(payload #>> '{envelope,workspace_id}'), (payload #>> '{envelope,lead_key}')";

/// Longest identifier PostgreSQL keeps (`NAMEDATALEN - 1` bytes); longer ones are cut.
const MAX_IDENTIFIER_BYTES: usize = 63;

/// A table the sink writes, with its statements.
#[derive(Debug, Clone)]
pub struct Table {
    /// As configured (unquoted).
    pub name: String,
    /// Quoted, schema-qualified when a schema is configured: `"s"."t"`.
    pub qualified: String,
    /// The mapped columns, in a fixed order (by name).
    pub columns: Vec<Column>,
    /// The batch insert (see the module comment).
    pub insert_sql: String,
    /// Quoted, schema-qualified name of the index erasures use: `"s"."<table>_nectar_lead"`.
    pub lead_index: String,
    /// The delete of one lead's rows: `$1` workspace id, `$2` lead key.
    pub erase_sql: String,
}

impl Table {
    fn new(schema: Option<&str>, name: &str, columns: Vec<Column>) -> Self {
        let qualified = qualify(schema, name);
        let insert_sql = insert_sql(&qualified, &columns);
        let erase_sql = format!(
            "DELETE FROM {qualified} WHERE (payload #>> '{{envelope,workspace_id}}') = $1 \
             AND (payload #>> '{{envelope,lead_key}}') = $2"
        );
        Self {
            name: name.to_owned(),
            lead_index: qualify(schema, &lead_index_name(name)),
            qualified,
            columns,
            insert_sql,
            erase_sql,
        }
    }

    /// `CREATE INDEX IF NOT EXISTS` of the index the erasure `DELETE` uses. Its expressions
    /// are exactly those of [`Table::erase_sql`], so the planner can use it.
    pub fn lead_index_sql(&self) -> String {
        let name = self
            .lead_index
            .rsplit_once('.')
            .map_or(self.lead_index.as_str(), |(_, n)| n);
        format!(
            "CREATE INDEX IF NOT EXISTS {name} ON {} ({LEAD_EXPRESSIONS})",
            self.qualified
        )
    }

    /// `CREATE TABLE IF NOT EXISTS` with the standard and the mapped columns.
    pub fn create_sql(&self) -> String {
        let mut sql = format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  event_id text PRIMARY KEY,\n  event_type text NOT NULL,\n  occurred_at timestamptz NOT NULL,\n  payload jsonb NOT NULL,\n  delivered_at timestamptz NOT NULL DEFAULT now()",
            self.qualified
        );
        for column in &self.columns {
            sql.push_str(&format!(",\n  {} {}", quote(&column.name), column.spec.sql_type.ddl()));
        }
        sql.push_str("\n)");
        sql
    }

    /// Every column the table must have, with its expected type (as `format_type` prints it).
    pub fn expected_columns(&self) -> Vec<(&str, &'static str)> {
        let mut columns = vec![
            ("event_id", "text"),
            ("event_type", "text"),
            ("occurred_at", "timestamp with time zone"),
            ("payload", "jsonb"),
            ("delivered_at", "timestamp with time zone"),
        ];
        debug_assert_eq!(columns.len(), STANDARD_COLUMNS.len());
        for column in &self.columns {
            let ty = match column.spec.sql_type {
                SqlType::Timestamptz => "timestamp with time zone",
                other => other.ddl(),
            };
            columns.push((column.name.as_str(), ty));
        }
        columns
    }
}

/// `<table>_nectar_lead`, cut to the length PostgreSQL keeps (on a character boundary).
fn lead_index_name(table: &str) -> String {
    const SUFFIX: &str = "_nectar_lead";
    let mut end = table.len().min(MAX_IDENTIFIER_BYTES - SUFFIX.len());
    while !table.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{SUFFIX}", &table[..end])
}

/// `"name"`, doubling any quote (names are validated identifiers; this is belt and braces).
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

pub fn qualify(schema: Option<&str>, name: &str) -> String {
    match schema {
        Some(schema) => format!("{}.{}", quote(schema), quote(name)),
        None => quote(name),
    }
}

fn insert_sql(qualified: &str, columns: &[Column]) -> String {
    let standard = [
        ("event_id", SqlType::Text),
        ("event_type", SqlType::Text),
        ("occurred_at", SqlType::Timestamptz),
        ("payload", SqlType::Jsonb),
    ];
    let all: Vec<(String, SqlType)> = standard
        .iter()
        .map(|(n, t)| (quote(n), *t))
        .chain(columns.iter().map(|c| (quote(&c.name), c.spec.sql_type)))
        .collect();
    let names: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    let selects: Vec<String> = all
        .iter()
        .enumerate()
        .map(|(i, (_, t))| t.select(&format!("u.c{i}")))
        .collect();
    let arrays: Vec<String> = all
        .iter()
        .enumerate()
        .map(|(i, (_, t))| format!("${}::{}", i + 1, t.array()))
        .collect();
    let aliases: Vec<String> = (0..all.len()).map(|i| format!("c{i}")).collect();
    format!(
        "INSERT INTO {qualified} ({}) SELECT {} FROM UNNEST({}) AS u({}) ON CONFLICT (\"event_id\") DO NOTHING",
        names.join(", "),
        selects.join(", "),
        arrays.join(", "),
        aliases.join(", ")
    )
}

/// Every table, which event type goes where, and the offsets table.
#[derive(Debug, Clone)]
pub struct Mapping {
    pub tables: Vec<Table>,
    by_event_type: HashMap<String, usize>,
    default_table: Option<usize>,
    /// Quoted, schema-qualified name of the offsets table.
    pub offsets_table: String,
    /// Unquoted name of the offsets table.
    pub offsets_table_name: String,
    pub schema: Option<String>,
}

impl Mapping {
    /// From a validated configuration (an invalid column spec is an error here too).
    pub fn new(config: &PostgresConfig) -> Result<Self, String> {
        let schema = config.schema.as_deref();
        let mut tables = Vec::new();
        let mut by_event_type = HashMap::new();
        for (i, table) in config.tables.iter().enumerate() {
            let mut columns = Vec::new();
            for (name, spec) in &table.columns {
                let spec = ColumnSpec::parse(spec).map_err(|e| format!("target.tables[{i}].columns.{name}: {e}"))?;
                columns.push(Column {
                    name: name.clone(),
                    spec,
                });
            }
            for event_type in &table.event_types {
                by_event_type.entry(event_type.clone()).or_insert(tables.len());
            }
            tables.push(Table::new(schema, &table.name, columns));
        }
        let default_table = if config.default_table.is_empty() {
            None
        } else {
            tables.push(Table::new(schema, &config.default_table, Vec::new()));
            Some(tables.len() - 1)
        };
        Ok(Self {
            tables,
            by_event_type,
            default_table,
            offsets_table: qualify(schema, &config.offsets_table),
            offsets_table_name: config.offsets_table.clone(),
            schema: config.schema.clone(),
        })
    }

    /// The table an event type goes to; `None` when no table maps it and there is no
    /// default table.
    pub fn table_for(&self, event_type: &str) -> Option<usize> {
        self.by_event_type.get(event_type).copied().or(self.default_table)
    }

    /// The rows of `events`, grouped by table; an event that cannot become a row is in
    /// `rejects` (its index and why).
    pub fn rows<'e>(&self, events: impl IntoIterator<Item = &'e Event>) -> Rows {
        let mut per_table: Vec<Option<TableRows>> = vec![None; self.tables.len()];
        let mut rejects = Vec::new();
        let mut erasures = Vec::new();
        for (index, event) in events.into_iter().enumerate() {
            let stripped;
            let event = if event.is_erasure() {
                match Erasure::of(index, event) {
                    Ok(erasure) => erasures.push(erasure),
                    Err(reason) => {
                        rejects.push((index, reason));
                        continue;
                    }
                }
                // The request is kept as a record that the lead was erased, without the
                // personal data it may carry (the person to erase, a form).
                stripped = event.erasure_record();
                &stripped
            } else {
                event
            };
            let Some(t) = self.table_for(&event.envelope.event_type) else {
                if event.is_erasure() {
                    // Erased all the same; no table records the request.
                    continue;
                }
                rejects.push((
                    index,
                    format!(
                        "no table maps event type `{}` and there is no default table (target.tables, target.default_table)",
                        event.envelope.event_type
                    ),
                ));
                continue;
            };
            let table = &self.tables[t];
            let rows = per_table[t].get_or_insert_with(|| TableRows::empty(t, table));
            if let Err(e) = rows.push(index, table, event) {
                rejects.push((index, format!("table {}: {e}", table.name)));
            }
        }
        Rows {
            tables: per_table.into_iter().flatten().collect(),
            rejects,
            erasures,
        }
    }

    /// The upsert of the stored positions, forward only (see the crate documentation).
    pub fn offsets_upsert_sql(&self) -> String {
        format!(
            "INSERT INTO {} AS o (consumer_group, topic, partition, next_offset, updated_at) \
             SELECT $1, u.topic, u.partition, u.next_offset, now() FROM UNNEST($2::text[], $3::int4[], $4::int8[]) AS u(topic, partition, next_offset) \
             ON CONFLICT (consumer_group, topic, partition) DO UPDATE SET next_offset = EXCLUDED.next_offset, updated_at = EXCLUDED.updated_at \
             WHERE o.next_offset < EXCLUDED.next_offset",
            self.offsets_table
        )
    }

    pub fn offsets_select_sql(&self) -> String {
        format!(
            "SELECT partition, next_offset FROM {} WHERE consumer_group = $1 AND topic = $2 AND partition = ANY($3)",
            self.offsets_table
        )
    }

    pub fn offsets_create_sql(&self) -> String {
        format!(
            "CREATE TABLE IF NOT EXISTS {} (\n  consumer_group text NOT NULL,\n  topic text NOT NULL,\n  partition int NOT NULL,\n  next_offset bigint NOT NULL,\n  updated_at timestamptz NOT NULL DEFAULT now(),\n  PRIMARY KEY (consumer_group, topic, partition)\n)",
            self.offsets_table
        )
    }

    pub fn offsets_expected_columns() -> [(&'static str, &'static str); 5] {
        [
            ("consumer_group", "text"),
            ("topic", "text"),
            ("partition", "integer"),
            ("next_offset", "bigint"),
            ("updated_at", "timestamp with time zone"),
        ]
    }
}

/// The rows of one delivery.
#[derive(Debug)]
pub struct Rows {
    pub tables: Vec<TableRows>,
    /// `(item index, reason)` of the events that cannot become rows.
    pub rejects: Vec<(usize, String)>,
    /// The erasure requests of the delivery, in delivery order.
    pub erasures: Vec<Erasure>,
}

/// A GDPR erasure request: delete every row of this lead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Erasure {
    /// Index of the request in the delivery.
    pub item: usize,
    pub event_id: String,
    pub workspace_id: String,
    pub lead_key: String,
}

impl Erasure {
    /// The erasure `event` (at `item`) asks for; an error when it names no lead.
    pub fn of(item: usize, event: &Event) -> Result<Self, String> {
        let lead = event.lead_to_erase()?;
        Ok(Self {
            item,
            event_id: event.envelope.event_id.clone(),
            workspace_id: lead.workspace_id,
            lead_key: lead.lead_key,
        })
    }
}

/// One statement of a delivery's transaction, in the order they run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Insert rows `range` of `Rows::tables[table_rows]`.
    Insert { table_rows: usize, range: Range<usize> },
    /// Delete the lead of `Rows::erasures[erasure]` from every table.
    Erase { erasure: usize },
}

impl Rows {
    /// The statements that write the delivery: the rows of the events before each erasure,
    /// then the erasure, then the rows after it (the request's own row included), so an
    /// erasure deletes what came before it in its partition and nothing after. Without
    /// erasures: one insert per table.
    pub fn steps(&self) -> Vec<Step> {
        let mut steps = Vec::new();
        let mut start = vec![0; self.tables.len()];
        let boundaries = self.erasures.iter().map(|e| Some(e.item)).chain([None]);
        for (erasure, boundary) in boundaries.enumerate() {
            for (t, rows) in self.tables.iter().enumerate() {
                let end = boundary.map_or(rows.len(), |item| rows.items.partition_point(|&i| i < item));
                if end > start[t] {
                    steps.push(Step::Insert {
                        table_rows: t,
                        range: start[t]..end,
                    });
                    start[t] = end;
                }
            }
            if boundary.is_some() {
                steps.push(Step::Erase { erasure });
            }
        }
        steps
    }
}

/// The values of one column for a run of rows.
#[derive(Debug, Clone)]
pub enum ColumnValues {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
}

impl ColumnValues {
    fn for_type(ty: SqlType) -> Self {
        match ty {
            SqlType::Text | SqlType::Jsonb => Self::Text(Vec::new()),
            SqlType::BigInt | SqlType::Timestamptz => Self::Int(Vec::new()),
            SqlType::Double => Self::Float(Vec::new()),
            SqlType::Boolean => Self::Bool(Vec::new()),
        }
    }

    fn truncate(&mut self, len: usize) {
        match self {
            Self::Text(v) => v.truncate(len),
            Self::Int(v) => v.truncate(len),
            Self::Float(v) => v.truncate(len),
            Self::Bool(v) => v.truncate(len),
        }
    }

    /// Bind the values of `range` as one array parameter.
    pub fn bind<'q>(
        &'q self,
        query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
        range: Range<usize>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        match self {
            Self::Text(v) => query.bind(&v[range]),
            Self::Int(v) => query.bind(&v[range]),
            Self::Float(v) => query.bind(&v[range]),
            Self::Bool(v) => query.bind(&v[range]),
        }
    }
}

/// The rows of one table, column by column (the shape `UNNEST` takes).
#[derive(Debug, Clone)]
pub struct TableRows {
    /// Index into [`Mapping::tables`].
    pub table: usize,
    /// For each row, the index of its item in the delivery.
    pub items: Vec<usize>,
    pub event_ids: Vec<String>,
    pub event_types: Vec<String>,
    pub occurred_at: Vec<i64>,
    /// The whole event as JSON text.
    pub payloads: Vec<String>,
    /// One entry per mapped column of the table.
    pub columns: Vec<ColumnValues>,
}

impl TableRows {
    /// No rows yet, for table `table` (index into [`Mapping::tables`]) described by `spec`.
    pub fn empty(table: usize, spec: &Table) -> Self {
        Self {
            table,
            items: Vec::new(),
            event_ids: Vec::new(),
            event_types: Vec::new(),
            occurred_at: Vec::new(),
            payloads: Vec::new(),
            columns: spec
                .columns
                .iter()
                .map(|c| ColumnValues::for_type(c.spec.sql_type))
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Add `event` as a row; on error nothing is added.
    fn push(&mut self, index: usize, table: &Table, event: &Event) -> Result<(), String> {
        let before = self.len();
        let result = self.push_values(table, event);
        match result {
            Ok(()) => self.items.push(index),
            Err(_) => {
                for column in &mut self.columns {
                    column.truncate(before);
                }
            }
        }
        result
    }

    fn push_values(&mut self, table: &Table, event: &Event) -> Result<(), String> {
        let payload = if table.columns.is_empty() {
            serde_json::to_string(event).map_err(|e| format!("the event cannot be written as JSON: {e}"))?
        } else {
            let json = serde_json::to_value(event).map_err(|e| format!("the event cannot be written as JSON: {e}"))?;
            for (column, values) in table.columns.iter().zip(&mut self.columns) {
                let value = lookup(&json, &column.spec.path);
                push_value(values, column.spec.sql_type, value).map_err(|e| {
                    format!(
                        "column {} ({}): {e} at {}",
                        column.name,
                        column.spec.sql_type,
                        column.spec.path.join(".")
                    )
                })?;
            }
            json.to_string()
        };
        self.event_ids.push(event.envelope.event_id.clone());
        self.event_types.push(event.envelope.event_type.clone());
        self.occurred_at.push(event.envelope.occurred_at);
        self.payloads.push(payload);
        Ok(())
    }

    /// Bind the standard and the mapped columns of `range`, in [`Table::insert_sql`] order.
    pub fn bind<'q>(
        &'q self,
        sql: &'q str,
        range: Range<usize>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        let mut query = sqlx::query(sql)
            .bind(&self.event_ids[range.clone()])
            .bind(&self.event_types[range.clone()])
            .bind(&self.occurred_at[range.clone()])
            .bind(&self.payloads[range.clone()]);
        for column in &self.columns {
            query = column.bind(query, range.clone());
        }
        query
    }
}

/// The value at `path` in `json`; `None` when a segment is missing or null.
fn lookup<'a>(json: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut value = json;
    for segment in path {
        value = match value {
            Value::Object(map) => map.get(segment)?,
            Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
            _ => return None,
        };
    }
    (!value.is_null()).then_some(value)
}

fn push_value(values: &mut ColumnValues, ty: SqlType, value: Option<&Value>) -> Result<(), String> {
    match values {
        ColumnValues::Text(v) => v.push(match (ty, value) {
            (_, None) => None,
            (SqlType::Jsonb, Some(value)) => Some(value.to_string()),
            (_, Some(Value::String(s))) => Some(s.clone()),
            (_, Some(other)) => Some(other.to_string()),
        }),
        ColumnValues::Int(v) => v.push(value.map(|value| to_int(value, ty)).transpose()?),
        ColumnValues::Float(v) => v.push(value.map(to_float).transpose()?),
        ColumnValues::Bool(v) => v.push(value.map(to_bool).transpose()?),
    }
    Ok(())
}

fn to_int(value: &Value, ty: SqlType) -> Result<i64, String> {
    let what = if ty == SqlType::Timestamptz {
        "epoch milliseconds"
    } else {
        "an integer"
    };
    let parsed = match value {
        Value::Number(n) => n.as_i64().or_else(|| {
            n.as_f64()
                .filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18)
                .map(|f| f as i64)
        }),
        Value::String(s) => s.trim().parse::<i64>().ok(),
        _ => None,
    };
    parsed.ok_or_else(|| format!("{} is not {what}", shown(value)))
}

fn to_float(value: &Value) -> Result<f64, String> {
    let parsed = match value {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    };
    parsed.ok_or_else(|| format!("{} is not a number", shown(value)))
}

fn to_bool(value: &Value) -> Result<bool, String> {
    match value {
        Value::Bool(b) => Ok(*b),
        Value::String(s) if s.eq_ignore_ascii_case("true") => Ok(true),
        Value::String(s) if s.eq_ignore_ascii_case("false") => Ok(false),
        other => Err(format!("{} is not a boolean", shown(other))),
    }
}

/// A value for a reason: at most 80 characters of its JSON.
fn shown(value: &Value) -> String {
    let text = value.to_string();
    if text.len() <= 80 {
        return format!("`{text}`");
    }
    let mut end = 80;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("`{}…`", &text[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TableConfig;
    use nectar_core::events::{Commerce, Envelope, Person};

    fn event(id: &str, event_type: &str) -> Event {
        let mut event = Event::new(Envelope {
            event_id: id.into(),
            event_type: event_type.into(),
            occurred_at: 1_700_000_000_123,
            received_at: 1_700_000_000_456,
            source: "form:contact".into(),
            workspace_id: "acme".into(),
            lead_key: Some("k1".into()),
            trace_parent: None,
            consent: None,
        });
        event.person = Some(Person {
            email: Some(format!("{id}@example.com")),
            ..Person::default()
        });
        event.commerce = Some(Commerce {
            amount_minor: Some(1200),
            ..Commerce::default()
        });
        event.attributes.insert("seats".into(), "12".into());
        event.attributes.insert("trial".into(), "true".into());
        event
    }

    fn config() -> PostgresConfig {
        let mut config = PostgresConfig::new("postgres://u:p@localhost/db");
        config.schema = Some("s1".into());
        config.tables = vec![TableConfig {
            name: "form_submissions".into(),
            event_types: vec!["form.submitted".into(), "lead.captured".into()],
            columns: [
                ("email", "person.email"),
                ("amount_minor", "commerce.amount_minor::bigint"),
                ("received_at", "envelope.received_at::timestamptz"),
                ("seats", "attributes.seats::double precision"),
                ("trial", "attributes.trial::boolean"),
                ("person", "person::jsonb"),
                ("missing", "form.form_id"),
            ]
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        }];
        config
    }

    #[test]
    fn column_specs_parse_with_an_optional_type() {
        assert_eq!(
            ColumnSpec::parse("person.email").unwrap(),
            ColumnSpec {
                path: vec!["person".into(), "email".into()],
                sql_type: SqlType::Text
            }
        );
        assert_eq!(
            ColumnSpec::parse("score.value::Double  Precision").unwrap().sql_type,
            SqlType::Double
        );
        assert_eq!(ColumnSpec::parse("a::int8").unwrap().sql_type, SqlType::BigInt);
        assert!(ColumnSpec::parse("a..b").unwrap_err().contains("empty segment"));
        assert!(
            ColumnSpec::parse("a::money")
                .unwrap_err()
                .contains("unknown type `money`")
        );
        assert!(ColumnSpec::parse("::text").unwrap_err().contains("path is empty"));
    }

    #[test]
    fn insert_is_one_unnest_per_table_with_typed_arrays() {
        let mapping = Mapping::new(&config()).unwrap();
        let table = &mapping.tables[0];
        assert_eq!(table.qualified, "\"s1\".\"form_submissions\"");
        assert_eq!(
            table.insert_sql,
            "INSERT INTO \"s1\".\"form_submissions\" (\"event_id\", \"event_type\", \"occurred_at\", \"payload\", \
             \"amount_minor\", \"email\", \"missing\", \"person\", \"received_at\", \"seats\", \"trial\") \
             SELECT u.c0, u.c1, timestamptz 'epoch' + u.c2 * interval '1 millisecond', u.c3::jsonb, u.c4, u.c5, u.c6, \
             u.c7::jsonb, timestamptz 'epoch' + u.c8 * interval '1 millisecond', u.c9, u.c10 \
             FROM UNNEST($1::text[], $2::text[], $3::int8[], $4::text[], $5::int8[], $6::text[], $7::text[], $8::text[], \
             $9::int8[], $10::float8[], $11::bool[]) AS u(c0, c1, c2, c3, c4, c5, c6, c7, c8, c9, c10) \
             ON CONFLICT (\"event_id\") DO NOTHING"
        );
        assert!(table.create_sql().contains("event_id text PRIMARY KEY"));
        assert!(table.create_sql().contains("\"seats\" double precision"));
        assert_eq!(mapping.tables[1].qualified, "\"s1\".\"nectar_events\"");
        assert!(
            mapping
                .offsets_upsert_sql()
                .contains("WHERE o.next_offset < EXCLUDED.next_offset")
        );
    }

    #[test]
    fn events_become_typed_rows_in_their_table() {
        let mapping = Mapping::new(&config()).unwrap();
        let events = [
            event("e1", "form.submitted"),
            event("e2", "page.viewed"),
            event("e3", "lead.captured"),
        ];
        let rows = mapping.rows(&events);
        assert!(rows.rejects.is_empty(), "{:?}", rows.rejects);
        assert_eq!(rows.tables.len(), 2);
        let forms = &rows.tables[0];
        assert_eq!(forms.table, 0);
        assert_eq!(forms.items, vec![0, 2]);
        assert_eq!(forms.event_ids, vec!["e1", "e3"]);
        assert_eq!(forms.occurred_at, vec![1_700_000_000_123; 2]);
        let payload: Value = serde_json::from_str(&forms.payloads[0]).unwrap();
        assert_eq!(payload["envelope"]["event_id"], "e1");
        // Columns by name: amount_minor, email, missing, person, received_at, seats, trial.
        assert!(matches!(&forms.columns[0], ColumnValues::Int(v) if v == &[Some(1200), Some(1200)]));
        assert!(matches!(&forms.columns[1], ColumnValues::Text(v) if v[0].as_deref() == Some("e1@example.com")));
        assert!(matches!(&forms.columns[2], ColumnValues::Text(v) if v == &[None, None]));
        assert!(
            matches!(&forms.columns[3], ColumnValues::Text(v) if v[0].as_deref().is_some_and(|j| j.contains("\"email\":\"e1@example.com\"")))
        );
        assert!(matches!(&forms.columns[4], ColumnValues::Int(v) if v[0] == Some(1_700_000_000_456)));
        assert!(matches!(&forms.columns[5], ColumnValues::Float(v) if v[0] == Some(12.0)));
        assert!(matches!(&forms.columns[6], ColumnValues::Bool(v) if v[0] == Some(true)));
        let defaults = &rows.tables[1];
        assert_eq!(defaults.table, 1);
        assert_eq!(defaults.items, vec![1]);
        assert!(defaults.columns.is_empty());
    }

    #[test]
    fn a_value_that_cannot_be_the_column_type_rejects_that_event_only() {
        let mapping = Mapping::new(&config()).unwrap();
        let mut bad = event("e2", "form.submitted");
        bad.attributes.insert("seats".into(), "a dozen".into());
        let events = [event("e1", "form.submitted"), bad, event("e3", "form.submitted")];
        let rows = mapping.rows(&events);
        assert_eq!(rows.rejects.len(), 1);
        assert_eq!(rows.rejects[0].0, 1);
        assert_eq!(
            rows.rejects[0].1,
            "table form_submissions: column seats (double precision): `\"a dozen\"` is not a number at attributes.seats"
        );
        let forms = &rows.tables[0];
        assert_eq!(forms.items, vec![0, 2]);
        for column in &forms.columns {
            let len = match column {
                ColumnValues::Text(v) => v.len(),
                ColumnValues::Int(v) => v.len(),
                ColumnValues::Float(v) => v.len(),
                ColumnValues::Bool(v) => v.len(),
            };
            assert_eq!(len, 2, "columns stay in step with the rows");
        }
    }

    fn erasure(id: &str, lead_key: Option<&str>) -> Event {
        let mut event = event(id, ERASURE);
        event.envelope.lead_key = lead_key.map(str::to_owned);
        event
    }

    #[test]
    fn erasure_deletes_by_the_indexed_envelope_fields_of_the_payload() {
        let mapping = Mapping::new(&config()).unwrap();
        let table = &mapping.tables[0];
        assert_eq!(
            table.erase_sql,
            "DELETE FROM \"s1\".\"form_submissions\" WHERE (payload #>> '{envelope,workspace_id}') = $1 \
             AND (payload #>> '{envelope,lead_key}') = $2"
        );
        assert_eq!(table.lead_index, "\"s1\".\"form_submissions_nectar_lead\"");
        assert_eq!(
            table.lead_index_sql(),
            "CREATE INDEX IF NOT EXISTS \"form_submissions_nectar_lead\" ON \"s1\".\"form_submissions\" \
             ((payload #>> '{envelope,workspace_id}'), (payload #>> '{envelope,lead_key}'))"
        );
        // The index's expressions are the delete's, so the planner can use it.
        assert!(table.lead_index_sql().contains(LEAD_EXPRESSIONS));
        let long = "t".repeat(63);
        assert_eq!(lead_index_name(&long).len(), MAX_IDENTIFIER_BYTES);
        assert!(lead_index_name(&long).ends_with("_nectar_lead"));
    }

    #[test]
    fn an_erasure_request_is_recorded_without_personal_data() {
        let mapping = Mapping::new(&config()).unwrap();
        let rows = mapping.rows(&[erasure("x1", Some("k1"))]);
        assert!(rows.rejects.is_empty(), "{:?}", rows.rejects);
        assert_eq!(
            rows.erasures,
            vec![Erasure {
                item: 0,
                event_id: "x1".into(),
                workspace_id: "acme".into(),
                lead_key: "k1".into()
            }]
        );
        let defaults = &rows.tables[0];
        assert_eq!(defaults.event_types, vec![ERASURE]);
        let payload: Value = serde_json::from_str(&defaults.payloads[0]).unwrap();
        assert_eq!(payload["envelope"]["lead_key"], "k1");
        for part in [
            "person",
            "form",
            "commerce",
            "activity",
            "context",
            "enrichment",
            "score",
        ] {
            assert!(payload[part].is_null(), "{part}: {payload}");
        }
        assert_eq!(payload["attributes"], serde_json::json!({}));
        assert!(!defaults.payloads[0].contains("@example.com"));
    }

    #[test]
    fn an_erasure_without_a_table_is_applied_and_one_without_a_lead_is_rejected() {
        let mut config = config();
        config.default_table = String::new();
        let mapping = Mapping::new(&config).unwrap();
        let rows = mapping.rows(&[erasure("x1", Some("k1")), erasure("x2", None), erasure("x3", Some(" "))]);
        assert!(rows.tables.is_empty());
        assert_eq!(rows.erasures.len(), 1);
        assert_eq!(rows.erasures[0].item, 0);
        assert_eq!(rows.rejects.iter().map(|r| r.0).collect::<Vec<_>>(), vec![1, 2]);
        assert!(
            rows.rejects[0].1.contains("without envelope.lead_key"),
            "{:?}",
            rows.rejects
        );
    }

    #[test]
    fn steps_insert_what_precedes_an_erasure_then_erase_then_insert_the_rest() {
        let mapping = Mapping::new(&config()).unwrap();
        let events = [
            event("e0", "form.submitted"),
            event("e1", "page.viewed"),
            erasure("x2", Some("k1")),
            event("e3", "form.submitted"),
            event("e4", "page.viewed"),
            erasure("x5", Some("k2")),
            erasure("x6", Some("k3")),
        ];
        let rows = mapping.rows(&events);
        assert!(rows.rejects.is_empty(), "{:?}", rows.rejects);
        // rows.tables[0]: form_submissions (e0, e3); [1]: nectar_events (e1, x2, e4, x5, x6).
        assert_eq!(rows.tables[1].items, vec![1, 2, 4, 5, 6]);
        let insert = |table_rows, range| Step::Insert { table_rows, range };
        assert_eq!(
            rows.steps(),
            vec![
                insert(0, 0..1),
                insert(1, 0..1),
                Step::Erase { erasure: 0 },
                insert(0, 1..2),
                insert(1, 1..3),
                Step::Erase { erasure: 1 },
                insert(1, 3..4),
                Step::Erase { erasure: 2 },
                insert(1, 4..5),
            ]
        );
        let plain = mapping.rows(&[event("e0", "form.submitted"), event("e1", "page.viewed")]);
        assert_eq!(plain.steps(), vec![insert(0, 0..1), insert(1, 0..1)]);
        assert_eq!(mapping.rows(&[]).steps(), vec![]);
    }

    #[test]
    fn without_a_default_table_an_unmapped_event_is_rejected_not_skipped() {
        let mut config = config();
        config.default_table = String::new();
        let mapping = Mapping::new(&config).unwrap();
        let rows = mapping.rows(&[event("e1", "page.viewed")]);
        assert!(rows.tables.is_empty());
        assert_eq!(rows.rejects.len(), 1);
        assert!(rows.rejects[0].1.contains("no table maps event type `page.viewed`"));
    }

    #[test]
    fn values_convert_leniently_but_never_silently_wrong() {
        assert_eq!(to_int(&serde_json::json!(42.0), SqlType::BigInt), Ok(42));
        assert_eq!(to_int(&serde_json::json!(" 42 "), SqlType::BigInt), Ok(42));
        assert!(to_int(&serde_json::json!(4.5), SqlType::BigInt).is_err());
        assert_eq!(
            to_int(&serde_json::json!("soon"), SqlType::Timestamptz),
            Err("`\"soon\"` is not epoch milliseconds".into())
        );
        assert_eq!(to_float(&serde_json::json!("1.5")), Ok(1.5));
        assert!(to_float(&serde_json::json!("NaN")).is_err());
        assert_eq!(to_bool(&serde_json::json!("TRUE")), Ok(true));
        assert!(to_bool(&serde_json::json!(1)).is_err());
        let json = serde_json::json!({"a": {"b": [10, null]}});
        let path = |p: &str| p.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(lookup(&json, &path("a.b.0")), Some(&serde_json::json!(10)));
        assert_eq!(lookup(&json, &path("a.b.1")), None);
        assert_eq!(lookup(&json, &path("a.c")), None);
        assert_eq!(lookup(&json, &path("a.b.x")), None);
    }
}
