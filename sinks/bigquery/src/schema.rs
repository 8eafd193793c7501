//! The BigQuery table, derived from the Avro schema of `io.nectar.Event`, and the rows that fit
//! it. Pure functions: no I/O.
//!
//! Mapping (Avro → BigQuery, <https://cloud.google.com/bigquery/docs/reference/rest/v2/tables#TableFieldSchema>):
//! - record → `RECORD` with its fields; a required field is `REQUIRED`;
//! - `["null", T]` → `T`, `NULLABLE`;
//! - map → `REPEATED RECORD {key STRING REQUIRED, value ...}` (entries sorted by key);
//! - array → `REPEATED` of the item type;
//! - string, enum → `STRING`; int, long → `INTEGER`; float, double → `FLOAT`; boolean →
//!   `BOOLEAN`; bytes → `BYTES` (base64 in JSON);
//! - long with `logicalType` `timestamp-millis` / `timestamp-micros` → `TIMESTAMP`, values
//!   sent as RFC 3339 text; int with `logicalType` `date` → `DATE`.
//!
//! The event's `envelope` record is hoisted to top-level columns (`event_id`, `occurred_at`,
//! ...): BigQuery partitions and clusters only on top-level columns, and analysts filter on
//! them in every query.

use std::collections::{HashMap, HashSet};
use std::fmt;

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value as Json};

/// BigQuery's legacy type names, as `tables.get` reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    String,
    Integer,
    Float,
    Boolean,
    Bytes,
    Timestamp,
    Date,
    Record,
}

impl FieldType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::String => "STRING",
            Self::Integer => "INTEGER",
            Self::Float => "FLOAT",
            Self::Boolean => "BOOLEAN",
            Self::Bytes => "BYTES",
            Self::Timestamp => "TIMESTAMP",
            Self::Date => "DATE",
            Self::Record => "RECORD",
        }
    }

    /// A type name as BigQuery writes it, legacy or GoogleSQL (`INT64`, `STRUCT`, ...).
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name.to_ascii_uppercase().as_str() {
            "STRING" => Self::String,
            "INTEGER" | "INT64" => Self::Integer,
            "FLOAT" | "FLOAT64" => Self::Float,
            "BOOLEAN" | "BOOL" => Self::Boolean,
            "BYTES" => Self::Bytes,
            "TIMESTAMP" => Self::Timestamp,
            "DATE" => Self::Date,
            "RECORD" | "STRUCT" => Self::Record,
            _ => return None,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Nullable,
    Required,
    Repeated,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nullable => "NULLABLE",
            Self::Required => "REQUIRED",
            Self::Repeated => "REPEATED",
        }
    }

    /// BigQuery's mode; absent means `NULLABLE`.
    pub fn parse(name: Option<&str>) -> Option<Self> {
        Some(match name.map(str::to_ascii_uppercase).as_deref() {
            None | Some("NULLABLE") => Self::Nullable,
            Some("REQUIRED") => Self::Required,
            Some("REPEATED") => Self::Repeated,
            Some(_) => return None,
        })
    }
}

/// How a column's value is converted from the event's JSON form.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Scalar(FieldType),
    /// Avro `timestamp-millis`: an integer of milliseconds → RFC 3339 text.
    TimestampMillis,
    /// Avro `timestamp-micros`.
    TimestampMicros,
    /// Avro `date`: days since the epoch → `YYYY-MM-DD`.
    Date,
    Record(Vec<Column>),
    /// A JSON object → entries `{key, value}`; the column is the `value` column.
    Map(Box<Column>),
}

impl Kind {
    fn field_type(&self) -> FieldType {
        match self {
            Self::Scalar(t) => *t,
            Self::TimestampMillis | Self::TimestampMicros => FieldType::Timestamp,
            Self::Date => FieldType::Date,
            Self::Record(_) | Self::Map(_) => FieldType::Record,
        }
    }
}

/// One column of the derived table.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub mode: Mode,
    pub kind: Kind,
    pub description: Option<String>,
    /// Where the value is in the parent's JSON object: the field name, or `envelope.<name>`
    /// for a hoisted column.
    pub source: Vec<String>,
}

impl Column {
    pub fn field_type(&self) -> FieldType {
        self.kind.field_type()
    }

    /// The subcolumns of a `RECORD` column (a map's `{key, value}`).
    pub fn children(&self) -> Vec<Column> {
        match &self.kind {
            Kind::Record(columns) => columns.clone(),
            Kind::Map(value) => vec![map_key(), (**value).clone()],
            _ => Vec::new(),
        }
    }
}

fn map_key() -> Column {
    Column {
        name: "key".into(),
        mode: Mode::Required,
        kind: Kind::Scalar(FieldType::String),
        description: None,
        source: vec!["key".into()],
    }
}

/// `TableFieldSchema`, as `tables.get` answers and `tables.insert` takes it. Only the parts
/// the sink reads or writes; others (policy tags, collation, ...) are ignored on read.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableField {
    pub name: String,
    #[serde(rename = "type")]
    pub field_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<TableField>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The `schema.fields` of a table made of `columns`.
pub fn table_fields(columns: &[Column]) -> Vec<TableField> {
    columns
        .iter()
        .map(|c| TableField {
            name: c.name.clone(),
            field_type: c.field_type().as_str().to_owned(),
            mode: Some(c.mode.as_str().to_owned()),
            fields: table_fields(&c.children()),
            description: c.description.clone(),
        })
        .collect()
}

/// Why an Avro schema cannot become a table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct SchemaError {
    pub path: String,
    pub message: String,
}

/// BigQuery's limit on a column description.
const MAX_DESCRIPTION: usize = 1024;

/// The table's columns for records of the Avro schema `avro` (a record), with the record
/// fields named in `hoist` replaced by their own fields.
pub fn derive_columns(avro: &Json, hoist: &[&str]) -> Result<Vec<Column>, SchemaError> {
    let mut deriver = Deriver::default();
    let top = deriver.named_record(avro, "", "")?;
    let mut columns = Vec::new();
    for column in top {
        if !hoist.contains(&column.name.as_str()) {
            columns.push(column);
            continue;
        }
        let Kind::Record(children) = column.kind else {
            return Err(err(&column.name, "only a record can be hoisted to top-level columns"));
        };
        if column.mode != Mode::Required {
            return Err(err(
                &column.name,
                "only a required record can be hoisted (its fields would all be null)",
            ));
        }
        for mut child in children {
            child.source.insert(0, column.name.clone());
            columns.push(child);
        }
    }
    let mut seen = HashSet::new();
    for c in &columns {
        if !seen.insert(c.name.to_ascii_lowercase()) {
            return Err(err(
                &c.name,
                "two columns have this name once the hoisted records are flattened",
            ));
        }
    }
    Ok(columns)
}

fn err(path: &str, message: impl Into<String>) -> SchemaError {
    SchemaError {
        path: if path.is_empty() {
            "(schema)".into()
        } else {
            path.to_owned()
        },
        message: message.into(),
    }
}

fn join(path: &str, name: &str) -> String {
    if path.is_empty() {
        name.to_owned()
    } else {
        format!("{path}.{name}")
    }
}

/// Walks an Avro schema, remembering named types so later references resolve.
#[derive(Default)]
struct Deriver {
    named: HashMap<String, Json>,
    /// Records being derived, to refuse recursive types (BigQuery has none).
    open: Vec<String>,
}

/// A column's shape before it has a name: its mode and kind.
type Shape = (Mode, Kind);

impl Deriver {
    /// The columns of a record definition (an object with `"type": "record"`).
    fn named_record(&mut self, schema: &Json, namespace: &str, path: &str) -> Result<Vec<Column>, SchemaError> {
        let obj = schema
            .as_object()
            .filter(|o| o.get("type").and_then(Json::as_str) == Some("record"))
            .ok_or_else(|| err(path, "expected a record"))?;
        let name = obj
            .get("name")
            .and_then(Json::as_str)
            .ok_or_else(|| err(path, "a record needs a name"))?;
        let namespace = obj.get("namespace").and_then(Json::as_str).unwrap_or(namespace);
        let full = full_name(name, namespace);
        let namespace = full.rsplit_once('.').map(|(ns, _)| ns).unwrap_or("").to_owned();
        if self.open.contains(&full) {
            return Err(err(path, format!("`{full}` is recursive; a table cannot nest itself")));
        }
        self.named.insert(full.clone(), schema.clone());
        self.open.push(full);
        let fields = obj
            .get("fields")
            .and_then(Json::as_array)
            .ok_or_else(|| err(path, "a record needs fields"))?;
        let mut columns = Vec::with_capacity(fields.len());
        for field in fields {
            let field_name = field
                .get("name")
                .and_then(Json::as_str)
                .ok_or_else(|| err(path, "a field needs a name"))?;
            let field_path = join(path, field_name);
            check_column_name(field_name, &field_path)?;
            let field_type = field
                .get("type")
                .ok_or_else(|| err(&field_path, "a field needs a type"))?;
            let (mode, kind) = self.shape(field_type, &namespace, &field_path)?;
            let description = field.get("doc").and_then(Json::as_str).map(|d| {
                let mut d = d.to_owned();
                if d.len() > MAX_DESCRIPTION {
                    let mut end = MAX_DESCRIPTION;
                    while !d.is_char_boundary(end) {
                        end -= 1;
                    }
                    d.truncate(end);
                }
                d
            });
            columns.push(Column {
                name: field_name.to_owned(),
                mode,
                kind,
                description,
                source: vec![field_name.to_owned()],
            });
        }
        self.open.pop();
        Ok(columns)
    }

    fn shape(&mut self, schema: &Json, namespace: &str, path: &str) -> Result<Shape, SchemaError> {
        match schema {
            Json::String(name) => self.named_or_primitive(name, namespace, path),
            Json::Array(branches) => {
                let non_null: Vec<&Json> = branches.iter().filter(|b| b.as_str() != Some("null")).collect();
                let has_null = non_null.len() < branches.len();
                match non_null.as_slice() {
                    [only] => {
                        let (mode, kind) = self.shape(only, namespace, path)?;
                        // BigQuery has no nullable array: null is written as no entries.
                        let mode = if mode == Mode::Repeated || !has_null {
                            mode
                        } else {
                            Mode::Nullable
                        };
                        Ok((mode, kind))
                    }
                    [] => Err(err(path, "a union of only null has no column type")),
                    _ => Err(err(
                        path,
                        "unions of several non-null types have no BigQuery column type",
                    )),
                }
            }
            Json::Object(obj) => {
                let type_name = obj.get("type").ok_or_else(|| err(path, "a type object needs `type`"))?;
                let logical = obj.get("logicalType").and_then(Json::as_str);
                match (type_name.as_str(), logical) {
                    (Some("long"), Some("timestamp-millis")) => Ok((Mode::Required, Kind::TimestampMillis)),
                    (Some("long"), Some("timestamp-micros")) => Ok((Mode::Required, Kind::TimestampMicros)),
                    (Some("int"), Some("date")) => Ok((Mode::Required, Kind::Date)),
                    (Some("record"), _) => {
                        let columns = self.named_record(schema, namespace, path)?;
                        Ok((Mode::Required, Kind::Record(columns)))
                    }
                    (Some("enum"), _) => {
                        if let Some(name) = obj.get("name").and_then(Json::as_str) {
                            let ns = obj.get("namespace").and_then(Json::as_str).unwrap_or(namespace);
                            self.named.insert(full_name(name, ns), schema.clone());
                        }
                        Ok((Mode::Required, Kind::Scalar(FieldType::String)))
                    }
                    (Some("fixed"), _) => Err(err(path, "Avro `fixed` has no column type here")),
                    (Some("map"), _) => {
                        let values = obj.get("values").ok_or_else(|| err(path, "a map needs `values`"))?;
                        let (mode, kind) = self.shape(values, namespace, &join(path, "value"))?;
                        let value = Column {
                            name: "value".into(),
                            mode,
                            kind,
                            description: None,
                            source: vec!["value".into()],
                        };
                        Ok((Mode::Repeated, Kind::Map(Box::new(value))))
                    }
                    (Some("array"), _) => {
                        let items = obj.get("items").ok_or_else(|| err(path, "an array needs `items`"))?;
                        let (mode, kind) = self.shape(items, namespace, path)?;
                        if mode == Mode::Repeated {
                            return Err(err(path, "arrays of arrays or maps have no BigQuery column type"));
                        }
                        if mode == Mode::Nullable {
                            return Err(err(path, "BigQuery arrays cannot hold nulls"));
                        }
                        Ok((Mode::Repeated, kind))
                    }
                    (Some(primitive), _) => self.named_or_primitive(primitive, namespace, path),
                    (None, _) => self.shape(type_name, namespace, path),
                }
            }
            _ => Err(err(path, "not an Avro type")),
        }
    }

    fn named_or_primitive(&mut self, name: &str, namespace: &str, path: &str) -> Result<Shape, SchemaError> {
        let scalar = |t| Ok((Mode::Required, Kind::Scalar(t)));
        match name {
            "string" => scalar(FieldType::String),
            "int" | "long" => scalar(FieldType::Integer),
            "float" | "double" => scalar(FieldType::Float),
            "boolean" => scalar(FieldType::Boolean),
            "bytes" => scalar(FieldType::Bytes),
            "null" => Err(err(path, "a null field has no column type")),
            reference => {
                let definition = self
                    .named
                    .get(&full_name(reference, namespace))
                    .or_else(|| self.named.get(reference))
                    .cloned()
                    .ok_or_else(|| err(path, format!("unknown type `{reference}`")))?;
                self.shape(&definition, namespace, path)
            }
        }
    }
}

fn full_name(name: &str, namespace: &str) -> String {
    if name.contains('.') || namespace.is_empty() {
        name.to_owned()
    } else {
        format!("{namespace}.{name}")
    }
}

/// BigQuery column names: a letter or underscore, then letters, digits, underscores; at most
/// 300 characters.
fn check_column_name(name: &str, path: &str) -> Result<(), SchemaError> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 300;
    if ok {
        Ok(())
    } else {
        Err(err(path, "not a valid BigQuery column name"))
    }
}

/// Why an event does not fit the table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct RowError {
    pub path: String,
    pub message: String,
}

/// The `json` of one `insertAll` row: the event's JSON form (its serde serialization) shaped
/// to `columns`. Null and empty values are left out (BigQuery reads a missing column as
/// NULL or no entries).
pub fn to_row(columns: &[Column], event: &Json) -> Result<Map<String, Json>, RowError> {
    record(columns, event, "")
}

fn record(columns: &[Column], value: &Json, path: &str) -> Result<Map<String, Json>, RowError> {
    if !value.is_object() {
        return Err(row_err(path, "expected an object"));
    }
    let mut row = Map::new();
    for column in columns {
        let column_path = join(path, &column.name);
        let mut source = Some(value);
        for key in &column.source {
            source = source.and_then(|v| v.get(key));
        }
        let value = source.unwrap_or(&Json::Null);
        if let Some(v) = column_value(column, value, &column_path)? {
            row.insert(column.name.clone(), v);
        }
    }
    Ok(row)
}

fn column_value(column: &Column, value: &Json, path: &str) -> Result<Option<Json>, RowError> {
    match column.mode {
        Mode::Repeated => {
            let entries = match (&column.kind, value) {
                (_, Json::Null) => return Ok(None),
                (Kind::Map(value_column), Json::Object(map)) => {
                    let mut keys: Vec<&String> = map.keys().collect();
                    keys.sort();
                    let mut entries = Vec::with_capacity(keys.len());
                    for key in keys {
                        let mut entry = Map::new();
                        entry.insert("key".into(), Json::String(key.clone()));
                        let entry_path = format!("{path}[{key}]");
                        if let Some(v) = column_value(value_column, &map[key], &entry_path)? {
                            entry.insert("value".into(), v);
                        }
                        entries.push(Json::Object(entry));
                    }
                    entries
                }
                (Kind::Map(_), _) => return Err(row_err(path, "expected an object (a map)")),
                (kind, Json::Array(items)) => items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| {
                        let item_path = format!("{path}[{i}]");
                        if item.is_null() {
                            return Err(row_err(&item_path, "BigQuery arrays cannot hold nulls"));
                        }
                        scalar_or_record(kind, item, &item_path)
                    })
                    .collect::<Result<_, _>>()?,
                _ => return Err(row_err(path, "expected an array")),
            };
            Ok((!entries.is_empty()).then_some(Json::Array(entries)))
        }
        Mode::Nullable if value.is_null() => Ok(None),
        Mode::Required if value.is_null() => Err(row_err(path, "a REQUIRED column has no value")),
        _ => scalar_or_record(&column.kind, value, path).map(Some),
    }
}

fn scalar_or_record(kind: &Kind, value: &Json, path: &str) -> Result<Json, RowError> {
    let wrong = |what: &str| row_err(path, format!("expected {what}, got {}", json_kind(value)));
    Ok(match kind {
        Kind::Scalar(FieldType::String) => Json::String(value.as_str().ok_or_else(|| wrong("a string"))?.to_owned()),
        Kind::Scalar(FieldType::Integer) => Json::from(value.as_i64().ok_or_else(|| wrong("an integer"))?),
        Kind::Scalar(FieldType::Float) => {
            let f = value.as_f64().ok_or_else(|| wrong("a number"))?;
            serde_json::Number::from_f64(f)
                .map(Json::Number)
                .ok_or_else(|| wrong("a finite number"))?
        }
        Kind::Scalar(FieldType::Boolean) => Json::Bool(value.as_bool().ok_or_else(|| wrong("a boolean"))?),
        Kind::Scalar(FieldType::Bytes) => Json::String(bytes_base64(value).ok_or_else(|| wrong("bytes"))?),
        Kind::TimestampMillis => {
            let ms = value.as_i64().ok_or_else(|| wrong("milliseconds since the epoch"))?;
            let micros = ms
                .checked_mul(1000)
                .ok_or_else(|| row_err(path, "timestamp out of range"))?;
            Json::String(format_timestamp(micros).ok_or_else(|| {
                row_err(
                    path,
                    format!("timestamp {ms} ms is outside BigQuery's range (years 1 to 9999)"),
                )
            })?)
        }
        Kind::TimestampMicros => {
            let micros = value.as_i64().ok_or_else(|| wrong("microseconds since the epoch"))?;
            Json::String(format_timestamp(micros).ok_or_else(|| {
                row_err(
                    path,
                    format!("timestamp {micros} µs is outside BigQuery's range (years 1 to 9999)"),
                )
            })?)
        }
        Kind::Date => {
            let days = value.as_i64().ok_or_else(|| wrong("days since the epoch"))?;
            let (y, m, d) = civil_from_days(days);
            if !(1..=9999).contains(&y) {
                return Err(row_err(path, "date outside BigQuery's range (years 1 to 9999)"));
            }
            Json::String(format!("{y:04}-{m:02}-{d:02}"))
        }
        Kind::Record(columns) => Json::Object(record(columns, value, path)?),
        Kind::Scalar(FieldType::Record | FieldType::Timestamp | FieldType::Date) | Kind::Map(_) => {
            return Err(row_err(path, "internal: not a scalar kind"));
        }
    })
}

fn row_err(path: &str, message: impl Into<String>) -> RowError {
    RowError {
        path: if path.is_empty() {
            "(event)".into()
        } else {
            path.to_owned()
        },
        message: message.into(),
    }
}

fn json_kind(value: &Json) -> &'static str {
    match value {
        Json::Null => "null",
        Json::Bool(_) => "a boolean",
        Json::Number(_) => "a number",
        Json::String(_) => "a string",
        Json::Array(_) => "an array",
        Json::Object(_) => "an object",
    }
}

/// Serde writes Avro bytes as an array of numbers (or, from some sources, a string).
fn bytes_base64(value: &Json) -> Option<String> {
    let bytes: Vec<u8> = match value {
        Json::Array(items) => items
            .iter()
            .map(|i| i.as_u64().and_then(|n| u8::try_from(n).ok()))
            .collect::<Option<_>>()?,
        Json::String(s) => s.as_bytes().to_vec(),
        _ => return None,
    };
    Some(base64::engine::general_purpose::STANDARD.encode(bytes))
}

/// Microseconds since the epoch as RFC 3339 UTC with microseconds, e.g.
/// `2023-11-14T22:13:20.123000Z`; `None` outside BigQuery's range (years 1 to 9999).
pub fn format_timestamp(micros: i64) -> Option<String> {
    let days = micros.div_euclid(86_400_000_000);
    let in_day = micros.rem_euclid(86_400_000_000);
    let (y, m, d) = civil_from_days(days);
    if !(1..=9999).contains(&y) {
        return None;
    }
    let secs = in_day / 1_000_000;
    let frac = in_day % 1_000_000;
    Some(format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{frac:06}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    ))
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A problem that makes an existing table unable to take the rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// The column path, e.g. `person.email`.
    pub column: String,
    pub problem: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` {}", self.column, self.problem)
    }
}

/// What keeps an existing table (`table`) from taking rows shaped by `columns`: a missing
/// column, a different type, a mode that would refuse the values, or a `REQUIRED` column the
/// rows never fill. Column names compare case-insensitively, as in BigQuery.
pub fn check_table(columns: &[Column], table: &[TableField]) -> Vec<Mismatch> {
    let mut problems = Vec::new();
    compare(columns, table, "", &mut problems);
    problems
}

fn compare(columns: &[Column], table: &[TableField], path: &str, problems: &mut Vec<Mismatch>) {
    let mismatch = |column: String, problem: String| Mismatch { column, problem };
    for column in columns {
        let column_path = join(path, &column.name);
        let wanted = format!("{} {}", column.field_type().as_str(), column.mode.as_str());
        let Some(field) = table.iter().find(|f| f.name.eq_ignore_ascii_case(&column.name)) else {
            problems.push(mismatch(
                column_path,
                format!("is missing (the rows need a {wanted} column)"),
            ));
            continue;
        };
        let field_type = FieldType::parse(&field.field_type);
        let field_mode = Mode::parse(field.mode.as_deref());
        if field_type != Some(column.field_type()) {
            problems.push(mismatch(
                column_path,
                format!(
                    "is {} in the table; the rows need {}",
                    field.field_type,
                    column.field_type().as_str()
                ),
            ));
            continue;
        }
        let mode_ok = match (column.mode, field_mode) {
            (Mode::Repeated, Some(Mode::Repeated)) => true,
            (Mode::Repeated, _) | (_, Some(Mode::Repeated)) | (_, None) => false,
            (Mode::Nullable, Some(Mode::Required)) => false,
            _ => true,
        };
        if !mode_ok {
            problems.push(mismatch(
                column_path.clone(),
                format!(
                    "is {} in the table; the rows need {}",
                    field.mode.as_deref().unwrap_or("NULLABLE"),
                    column.mode.as_str()
                ),
            ));
        }
        if column.field_type() == FieldType::Record {
            compare(&column.children(), &field.fields, &column_path, problems);
        }
    }
    for field in table {
        let ours = columns.iter().any(|c| c.name.eq_ignore_ascii_case(&field.name));
        if !ours && Mode::parse(field.mode.as_deref()) == Some(Mode::Required) {
            problems.push(mismatch(
                join(path, &field.name),
                "is REQUIRED in the table but the rows have no such column".into(),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use nectar_core::events::{Consent, Envelope, Event, LeadScore, Person};
    use serde_json::json;

    fn event_columns() -> Vec<Column> {
        derive_columns(&nectar_core::schema::EVENT.resolved_json(), &["envelope"]).expect("derives")
    }

    fn find<'a>(fields: &'a [TableField], name: &str) -> &'a TableField {
        fields
            .iter()
            .find(|f| f.name == name)
            .unwrap_or_else(|| panic!("no column {name}"))
    }

    #[test]
    fn event_schema_becomes_a_table_with_the_envelope_on_top() {
        let fields = table_fields(&event_columns());
        let names: Vec<&str> = fields.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "event_id",
                "event_type",
                "occurred_at",
                "received_at",
                "source",
                "workspace_id",
                "lead_key",
                "trace_parent",
                "consent",
                "person",
                "form",
                "commerce",
                "activity",
                "context",
                "attributes",
                "enrichment",
                "score"
            ]
        );
        let f = |name| find(&fields, name);
        assert_eq!(
            (f("event_id").field_type.as_str(), f("event_id").mode.as_deref()),
            ("STRING", Some("REQUIRED"))
        );
        assert_eq!(f("occurred_at").field_type, "TIMESTAMP");
        assert_eq!(f("received_at").field_type, "TIMESTAMP");
        assert_eq!(
            (f("lead_key").field_type.as_str(), f("lead_key").mode.as_deref()),
            ("STRING", Some("NULLABLE"))
        );
        let consent = f("consent");
        assert_eq!(
            (consent.field_type.as_str(), consent.mode.as_deref()),
            ("RECORD", Some("NULLABLE"))
        );
        assert_eq!(find(&consent.fields, "marketing").field_type, "BOOLEAN");
        let attributes = f("attributes");
        assert_eq!(
            (attributes.field_type.as_str(), attributes.mode.as_deref()),
            ("RECORD", Some("REPEATED"))
        );
        assert_eq!(
            attributes.fields,
            vec![
                TableField {
                    name: "key".into(),
                    field_type: "STRING".into(),
                    mode: Some("REQUIRED".into()),
                    fields: vec![],
                    description: None
                },
                TableField {
                    name: "value".into(),
                    field_type: "STRING".into(),
                    mode: Some("REQUIRED".into()),
                    fields: vec![],
                    description: None
                },
            ]
        );
        let commerce = f("commerce");
        assert_eq!(find(&commerce.fields, "amount_minor").field_type, "INTEGER");
        assert_eq!(find(&commerce.fields, "amount_minor").mode.as_deref(), Some("NULLABLE"));
        let score = f("score");
        assert_eq!(find(&score.fields, "value").field_type, "FLOAT");
        assert_eq!(find(&score.fields, "value").mode.as_deref(), Some("REQUIRED"));
        let external_ids = find(&f("person").fields, "external_ids");
        assert_eq!(external_ids.mode.as_deref(), Some("REPEATED"));
        assert!(
            f("occurred_at")
                .description
                .as_deref()
                .unwrap_or("")
                .contains("When it happened")
        );
    }

    #[test]
    fn unions_arrays_enums_dates_and_references_map() {
        let avro = json!({
            "type": "record", "name": "T", "namespace": "x",
            "fields": [
                {"name": "tags", "type": {"type": "array", "items": "string"}},
                {"name": "color", "type": {"type": "enum", "name": "Color", "symbols": ["RED"]}},
                {"name": "other_color", "type": ["null", "Color"]},
                {"name": "day", "type": {"type": "int", "logicalType": "date"}},
                {"name": "at", "type": ["null", {"type": "long", "logicalType": "timestamp-micros"}]},
                {"name": "blob", "type": "bytes"},
                {"name": "maybe_list", "type": ["null", {"type": "array", "items": "long"}]},
                {"name": "inner", "type": {"type": "record", "name": "Inner", "fields": [{"name": "n", "type": "float"}]}},
                {"name": "again", "type": ["null", "x.Inner"]}
            ]
        });
        let fields = table_fields(&derive_columns(&avro, &[]).expect("derives"));
        let f = |name| find(&fields, name);
        assert_eq!(
            (f("tags").field_type.as_str(), f("tags").mode.as_deref()),
            ("STRING", Some("REPEATED"))
        );
        assert_eq!(f("color").field_type, "STRING");
        assert_eq!(
            (f("other_color").field_type.as_str(), f("other_color").mode.as_deref()),
            ("STRING", Some("NULLABLE"))
        );
        assert_eq!(f("day").field_type, "DATE");
        assert_eq!(
            (f("at").field_type.as_str(), f("at").mode.as_deref()),
            ("TIMESTAMP", Some("NULLABLE"))
        );
        assert_eq!(f("blob").field_type, "BYTES");
        assert_eq!(
            f("maybe_list").mode.as_deref(),
            Some("REPEATED"),
            "a nullable array is just repeated"
        );
        assert_eq!(f("again").fields, f("inner").fields);
        assert_eq!(f("again").mode.as_deref(), Some("NULLABLE"));
    }

    #[test]
    fn schemas_without_a_column_type_are_refused_with_their_path() {
        let union = json!({"type": "record", "name": "T", "fields": [
            {"name": "a", "type": ["null", "string", "long"]}
        ]});
        let e = derive_columns(&union, &[]).unwrap_err();
        assert_eq!(e.path, "a");
        let recursive = json!({"type": "record", "name": "Node", "fields": [
            {"name": "next", "type": ["null", "Node"]}
        ]});
        assert!(
            derive_columns(&recursive, &[])
                .unwrap_err()
                .message
                .contains("recursive")
        );
        let nested = json!({"type": "record", "name": "T", "fields": [
            {"name": "m", "type": {"type": "array", "items": {"type": "array", "items": "string"}}}
        ]});
        assert_eq!(derive_columns(&nested, &[]).unwrap_err().path, "m");
        let clash = json!({"type": "record", "name": "T", "fields": [
            {"name": "id", "type": "string"},
            {"name": "env", "type": {"type": "record", "name": "E", "fields": [{"name": "id", "type": "string"}]}}
        ]});
        assert_eq!(derive_columns(&clash, &["env"]).unwrap_err().path, "id");
    }

    fn sample_event() -> Event {
        let mut event = Event::new(Envelope {
            event_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            event_type: "form.submitted".into(),
            occurred_at: 1_700_000_000_123,
            received_at: 1_700_000_001_000,
            source: "form:contact".into(),
            workspace_id: "acme".into(),
            lead_key: Some("k1".into()),
            trace_parent: None,
            consent: Some(Consent {
                marketing: Some(true),
                ..Consent::default()
            }),
        });
        event.person = Some(Person {
            email: Some("ada@example.com".into()),
            external_ids: [("stripe_customer".into(), "cus_1".into())].into(),
            ..Person::default()
        });
        event.attributes = [("b".into(), "2".into()), ("a".into(), "1".into())].into();
        event.score = Some(LeadScore {
            value: 42.5,
            delta: 10.0,
            stage: "lead".into(),
            crossed: None,
        });
        event
    }

    #[test]
    fn an_event_becomes_a_row_of_the_table() {
        let event = serde_json::to_value(sample_event()).expect("json");
        let row = Json::Object(to_row(&event_columns(), &event).expect("fits"));
        assert_eq!(
            row,
            json!({
                "event_id": "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b",
                "event_type": "form.submitted",
                "occurred_at": "2023-11-14T22:13:20.123000Z",
                "received_at": "2023-11-14T22:13:21.000000Z",
                "source": "form:contact",
                "workspace_id": "acme",
                "lead_key": "k1",
                "consent": {"marketing": true},
                "person": {
                    "email": "ada@example.com",
                    "external_ids": [{"key": "stripe_customer", "value": "cus_1"}]
                },
                "attributes": [{"key": "a", "value": "1"}, {"key": "b", "value": "2"}],
                "score": {"value": 42.5, "delta": 10.0, "stage": "lead"}
            })
        );
    }

    #[test]
    fn values_that_do_not_fit_name_their_column() {
        let columns = event_columns();
        let mut event = serde_json::to_value(sample_event()).expect("json");
        event["envelope"]["occurred_at"] = json!("yesterday");
        let e = to_row(&columns, &event).unwrap_err();
        assert_eq!(e.path, "occurred_at");
        assert!(e.message.contains("milliseconds"), "{e}");
        let mut event = serde_json::to_value(sample_event()).expect("json");
        event["score"]["value"] = Json::Null;
        assert_eq!(to_row(&columns, &event).unwrap_err().path, "score.value");
        let mut event = serde_json::to_value(sample_event()).expect("json");
        event["envelope"]["received_at"] = json!(300_000_000_000_000_i64);
        assert!(to_row(&columns, &event).unwrap_err().message.contains("range"));
    }

    #[test]
    fn timestamps_are_rfc3339_utc() {
        assert_eq!(format_timestamp(0).as_deref(), Some("1970-01-01T00:00:00.000000Z"));
        assert_eq!(format_timestamp(-1).as_deref(), Some("1969-12-31T23:59:59.999999Z"));
        assert_eq!(
            format_timestamp(951_782_400_000_000).as_deref(),
            Some("2000-02-29T00:00:00.000000Z")
        );
        assert_eq!(
            format_timestamp(253_402_300_799_999_999).as_deref(),
            Some("9999-12-31T23:59:59.999999Z")
        );
        assert_eq!(format_timestamp(253_402_300_800_000_000), None);
        assert_eq!(
            format_timestamp(-62_135_596_800_000_000).as_deref(),
            Some("0001-01-01T00:00:00.000000Z")
        );
        assert_eq!(format_timestamp(-62_135_596_800_000_001), None);
    }

    #[test]
    fn an_existing_table_is_checked_column_by_column() {
        let columns = event_columns();
        let mut fields = table_fields(&columns);
        assert!(check_table(&columns, &fields).is_empty(), "its own table fits");

        // GoogleSQL type names, upper/lower case and extra nullable columns are fine.
        fields[0].field_type = "string".into();
        fields[0].name = "EVENT_ID".into();
        find_mut(&mut fields, "score").fields[0].field_type = "FLOAT64".into();
        fields.push(TableField {
            name: "loaded_by".into(),
            field_type: "STRING".into(),
            mode: None,
            fields: vec![],
            description: None,
        });
        assert!(check_table(&columns, &fields).is_empty());

        let person = find_mut(&mut fields, "person");
        person.fields.retain(|f| f.name != "email");
        find_mut(&mut fields, "lead_key").mode = Some("REQUIRED".into());
        find_mut(&mut fields, "occurred_at").field_type = "INTEGER".into();
        fields.push(TableField {
            name: "tenant".into(),
            field_type: "STRING".into(),
            mode: Some("REQUIRED".into()),
            fields: vec![],
            description: None,
        });
        let problems: Vec<String> = check_table(&columns, &fields).iter().map(ToString::to_string).collect();
        assert_eq!(
            problems,
            [
                "`occurred_at` is INTEGER in the table; the rows need TIMESTAMP",
                "`lead_key` is REQUIRED in the table; the rows need NULLABLE",
                "`person.email` is missing (the rows need a STRING NULLABLE column)",
                "`tenant` is REQUIRED in the table but the rows have no such column",
            ]
        );
    }

    fn find_mut<'a>(fields: &'a mut [TableField], name: &str) -> &'a mut TableField {
        fields.iter_mut().find(|f| f.name == name).expect("column")
    }
}
