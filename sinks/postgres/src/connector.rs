//! The PostgreSQL connector: one transaction per delivery that inserts every row and stores
//! the consumed positions, or changes nothing.
//!
//! Guarantee: exactly once at the target. The rows of a batch and the next offset of each of
//! its partitions commit in the same transaction, and on (re)assignment the consumer starts
//! from the stored positions, so an event committed once is not written again after a crash;
//! `ON CONFLICT (event_id) DO NOTHING` absorbs what still comes twice (a commit whose answer
//! was lost, an event produced twice, a replayed dead letter that had made it after all).
//! Where it ends: the dead-letter topic is at least once (an event rejected just before a
//! crash can be dead-lettered again), and rows deleted at the target are not written again
//! unless the positions are reset (see the README).
//!
//! GDPR erasure requests are applied in the same transaction: the rows of every table whose
//! payload names the lead (`envelope.workspace_id` and `envelope.lead_key`) are deleted
//! after the rows of the batch's earlier events are inserted and before its later ones are
//! (see [`crate::mapping::Rows::steps`]). A redelivered batch runs the same statements in the
//! same order and leaves the same rows.
//!
//! A row the database refuses (a CHECK constraint, a value out of range) must not hold the
//! batch back forever: the connector finds the refused rows by bisection in a second
//! transaction, under savepoints, and rolls it back; it answers `Reject` for them and `Retry`
//! (at once) for the others. The runtime dead-letters the rejects and delivers the rest,
//! which then commits with the positions, so no position past a rejected event is stored
//! before that event is in the dead-letter topic.

use std::collections::BTreeMap;
use std::ops::Range;
use std::time::Duration;

use nectar_core::events::Event;
use nectar_sink::{Connector, Delivery, DeliveryError, ItemResult, Positions, StartError};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor, PgTransaction};

use crate::config::PostgresConfig;
use crate::errors::{self, Class};
use crate::mapping::{Mapping, Rows, Step, Table, TableRows};

/// Key of the advisory lock instances take while they create and check the tables, so two
/// starting at once do not race on `CREATE TABLE`.
const DDL_LOCK: i64 = 0x6e65_6374_6172_7067; // "nectarpg"

/// Delivers events as rows (see the module documentation).
#[derive(Clone)]
pub struct PostgresConnector {
    pool: PgPool,
    options: PgConnectOptions,
    mapping: Mapping,
    group: String,
    create_tables: bool,
    connect_timeout: Duration,
    offsets_upsert: String,
    offsets_select: String,
}

// By hand: `PgConnectOptions`'s own `Debug` prints the password.
impl std::fmt::Debug for PostgresConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConnector")
            .field("host", &self.options.get_host())
            .field("database", &self.options.get_database())
            .field("user", &self.options.get_username())
            .field(
                "tables",
                &self.mapping.tables.iter().map(|t| &t.qualified).collect::<Vec<_>>(),
            )
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl PostgresConnector {
    /// A connector writing to `target`, with a pool of `pool_size` connections (opened on
    /// demand), storing positions under consumer group `group`. Call [`Connector::start`]
    /// before delivering: it creates and checks the tables.
    pub fn new(target: &PostgresConfig, pool_size: usize, group: impl Into<String>) -> anyhow::Result<Self> {
        let options = target
            .connect_options()
            .map_err(|e| anyhow::anyhow!("target.url: {e}"))?;
        let mapping = Mapping::new(target).map_err(anyhow::Error::msg)?;
        let connect_timeout = Duration::from_millis(target.connect_timeout_ms);
        let pool = PgPoolOptions::new()
            .max_connections(u32::try_from(pool_size.max(1)).unwrap_or(u32::MAX))
            .acquire_timeout(connect_timeout)
            .connect_lazy_with(options.clone());
        Ok(Self {
            pool,
            options,
            offsets_upsert: mapping.offsets_upsert_sql(),
            offsets_select: mapping.offsets_select_sql(),
            mapping,
            group: group.into(),
            create_tables: target.create_tables,
            connect_timeout,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn mapping(&self) -> &Mapping {
        &self.mapping
    }

    /// Write `events` (and `positions`) in one transaction, the way a delivery does, without
    /// the runtime: for benchmarks and tools. An event that cannot become a row, or a row
    /// PostgreSQL refuses, fails the whole call here (nothing is written).
    pub async fn write_events(&self, events: &[Event], positions: Option<&Positions>) -> Result<(), String> {
        let rows = self.mapping.rows(events);
        if let Some((index, reason)) = rows.rejects.first() {
            return Err(format!("event {index}: {reason}"));
        }
        self.write(&rows, positions).await.map_err(|e| errors::describe(&e))
    }

    /// The rows, the erasures and the positions in one transaction.
    async fn write(&self, rows: &Rows, positions: Option<&Positions>) -> Result<(), sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        for step in rows.steps() {
            match step {
                Step::Insert { table_rows, range } => {
                    let rows = &rows.tables[table_rows];
                    let table = &self.mapping.tables[rows.table];
                    rows.bind(&table.insert_sql, range).execute(&mut *tx).await?;
                }
                Step::Erase { erasure } => {
                    let erasure = &rows.erasures[erasure];
                    let mut deleted = 0;
                    for table in &self.mapping.tables {
                        deleted += sqlx::query(&table.erase_sql)
                            .bind(&erasure.workspace_id)
                            .bind(&erasure.lead_key)
                            .execute(&mut *tx)
                            .await?
                            .rows_affected();
                    }
                    tracing::info!(
                        event_id = %erasure.event_id,
                        workspace_id = %erasure.workspace_id,
                        rows = deleted,
                        "erasure request: the lead's rows are deleted with this transaction"
                    );
                }
            }
        }
        if let Some(positions) = positions {
            self.store_positions(&mut tx, positions).await?;
        }
        tx.commit().await
    }

    async fn store_positions(&self, tx: &mut PgTransaction<'_>, positions: &Positions) -> Result<(), sqlx::Error> {
        if positions.is_empty() {
            return Ok(());
        }
        let mut topics = Vec::with_capacity(positions.len());
        let mut partitions = Vec::with_capacity(positions.len());
        let mut offsets = Vec::with_capacity(positions.len());
        for ((topic, partition), next) in positions {
            topics.push(topic.as_str());
            partitions.push(*partition);
            offsets.push(*next);
        }
        sqlx::query(&self.offsets_upsert)
            .bind(&self.group)
            .bind(&topics)
            .bind(&partitions)
            .bind(&offsets)
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// After a row-level error: which rows the database refuses, found by bisection under
    /// savepoints in a transaction that is rolled back. Rows are tried in delivery order
    /// after the rows before them, so a row refused only because of an earlier one of the
    /// batch (two events with the same value of a unique column) is found too. Returns
    /// `(item index, reason, response)`.
    async fn find_refused_rows(&self, tables: &[TableRows]) -> Result<Vec<(usize, String, String)>, sqlx::Error> {
        let mut tx = self.pool.begin().await?;
        // Deferred constraints would only fail at COMMIT: check them per statement.
        execute_raw(&mut tx, "SET CONSTRAINTS ALL IMMEDIATE").await?;
        let mut refused = Vec::new();
        for rows in tables {
            let table = &self.mapping.tables[rows.table];
            // A stack of ranges, the next to try last.
            let mut pending: Vec<Range<usize>> = Vec::with_capacity(16);
            pending.push(0..rows.len());
            while let Some(range) = pending.pop() {
                if range.is_empty() {
                    continue;
                }
                execute_raw(&mut tx, "SAVEPOINT nectar_isolate").await?;
                match rows.bind(&table.insert_sql, range.clone()).execute(&mut *tx).await {
                    Ok(_) => {
                        execute_raw(&mut tx, "RELEASE SAVEPOINT nectar_isolate").await?;
                    }
                    Err(e) if errors::classify(&e) == Class::Row => {
                        execute_raw(
                            &mut tx,
                            "ROLLBACK TO SAVEPOINT nectar_isolate; RELEASE SAVEPOINT nectar_isolate",
                        )
                        .await?;
                        if range.len() == 1 {
                            refused.push((rows.items[range.start], refusal_reason(table, &e), errors::describe(&e)));
                        } else {
                            let mid = range.start + range.len() / 2;
                            pending.push(mid..range.end);
                            pending.push(range.start..mid);
                        }
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        tx.rollback().await?;
        Ok(refused)
    }

    /// The delivery error for `e`. The pool only says it timed out when the server kept
    /// refusing new connections with an error it deems transient (too many connections,
    /// starting up): one direct attempt finds out which, so the log says why — and a password
    /// that stopped working is fatal, not retried forever.
    async fn explain(&self, e: sqlx::Error) -> DeliveryError {
        if !matches!(e, sqlx::Error::PoolTimedOut) {
            return errors::delivery_error(&e);
        }
        let waited = format!(
            "no connection from the pool within {} ms",
            self.connect_timeout.as_millis()
        );
        match tokio::time::timeout(self.connect_timeout, PgConnection::connect_with(&self.options)).await {
            Ok(Err(cause)) => match errors::delivery_error(&cause) {
                DeliveryError::Retry { reason, after } => DeliveryError::Retry {
                    reason: format!("{waited}: {reason}"),
                    after,
                },
                DeliveryError::Fatal(reason) => DeliveryError::Fatal(format!("{waited}: {reason}")),
            },
            Ok(Ok(conn)) => {
                let _ = conn.close().await;
                DeliveryError::retry(format!("{waited} (a direct connection works now)"))
            }
            Err(_) => DeliveryError::retry(format!("{waited}; connecting directly timed out too")),
        }
    }

    /// Create what is missing and check what exists (see [`Connector::start`]).
    async fn prepare(&self, conn: &mut PgConnection) -> Result<(), StartError> {
        let mut tx = conn
            .begin()
            .await
            .map_err(|e| errors::start_error(&e, "starting a transaction"))?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(DDL_LOCK)
            .execute(&mut *tx)
            .await
            .map_err(|e| errors::start_error(&e, "taking the table-creation lock"))?;
        if let Some(schema) = &self.mapping.schema {
            let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
                .bind(schema)
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| errors::start_error(&e, "looking up the schema"))?;
            if !exists {
                if !self.create_tables {
                    return Err(StartError::Config(format!(
                        "schema \"{schema}\" (target.schema) does not exist and target.create_tables is false"
                    )));
                }
                execute_raw(
                    &mut tx,
                    &format!("CREATE SCHEMA IF NOT EXISTS {}", crate::mapping::quote(schema)),
                )
                .await
                .map_err(|e| errors::start_error(&e, &format!("creating schema \"{schema}\"")))?;
            }
        }
        for (i, table) in self.mapping.tables.iter().enumerate() {
            let key = if table.columns.is_empty() && i == self.mapping.tables.len() - 1 {
                "target.default_table".to_owned()
            } else {
                format!("target.tables[{i}]")
            };
            let expected = table.expected_columns();
            let create_sql = format!("{};\n{}", table.create_sql(), table.lead_index_sql());
            self.ensure_table(&mut tx, &table.qualified, &create_sql, &expected, &key)
                .await?;
            // An empty insert is planned and executed: a column of an incompatible type, a
            // missing unique key on event_id or a missing INSERT privilege shows now.
            let empty = TableRows::empty(i, table);
            empty
                .bind(&table.insert_sql, 0..0)
                .execute(&mut *tx)
                .await
                .map_err(|e| table_error(table, &e))?;
            self.ensure_lead_index(&mut tx, table).await?;
            // The erasure delete, matching nothing (`= NULL`): a missing DELETE privilege
            // shows now, not at the first erasure request.
            sqlx::query(&table.erase_sql)
                .bind(None::<String>)
                .bind(None::<String>)
                .execute(&mut *tx)
                .await
                .map_err(|e| {
                    errors::start_error(
                        &e,
                        &format!(
                            "checking erasure deletes from table {} (the sink needs DELETE)",
                            table.qualified
                        ),
                    )
                })?;
        }
        let offsets = self.mapping.offsets_table.clone();
        self.ensure_table(
            &mut tx,
            &offsets,
            &self.mapping.offsets_create_sql(),
            &Mapping::offsets_expected_columns(),
            "target.offsets_table",
        )
        .await?;
        sqlx::query(&self.offsets_upsert)
            .bind(&self.group)
            .bind(Vec::<String>::new())
            .bind(Vec::<i32>::new())
            .bind(Vec::<i64>::new())
            .execute(&mut *tx)
            .await
            .map_err(|e| errors::start_error(&e, &format!("writing positions to {offsets}")))?;
        sqlx::query(&self.offsets_select)
            .bind(&self.group)
            .bind("")
            .bind(Vec::<i32>::new())
            .execute(&mut *tx)
            .await
            .map_err(|e| errors::start_error(&e, &format!("reading positions from {offsets}")))?;
        tx.commit()
            .await
            .map_err(|e| errors::start_error(&e, "committing the table set-up"))
    }

    /// The index erasures delete by: created when missing (with `target.create_tables`, also
    /// on a table that existed before); without it an erasure still works, by scanning the
    /// table, so a missing index is only a warning with the statement to run.
    async fn ensure_lead_index(&self, tx: &mut PgTransaction<'_>, table: &Table) -> Result<(), StartError> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(&table.lead_index)
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| errors::start_error(&e, &format!("looking up index {}", table.lead_index)))?;
        if exists {
            return Ok(());
        }
        let sql = table.lead_index_sql();
        if !self.create_tables {
            tracing::warn!(
                table = %table.qualified,
                "no index for erasure requests: each one scans the table; create it with {}",
                sql.replacen("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1)
            );
            return Ok(());
        }
        tracing::info!(table = %table.qualified, index = %table.lead_index, "creating the index for erasure requests");
        // Under a savepoint: on a table the sink's user does not own (created by someone
        // else before erasure support), CREATE INDEX is refused, which must not stop a sink
        // that could run before; erasures then scan the table.
        execute_raw(tx, "SAVEPOINT nectar_lead_index")
            .await
            .map_err(|e| errors::start_error(&e, "creating a savepoint"))?;
        match execute_raw(tx, &sql).await {
            Ok(()) => execute_raw(tx, "RELEASE SAVEPOINT nectar_lead_index").await,
            Err(e) if matches!(errors::classify(&e), Class::Fatal) => {
                tracing::warn!(
                    table = %table.qualified,
                    "cannot create the index for erasure requests ({}): each one scans the table; have the \
                     table's owner run {}",
                    errors::describe(&e),
                    sql.replacen("CREATE INDEX", "CREATE INDEX CONCURRENTLY", 1)
                );
                execute_raw(
                    tx,
                    "ROLLBACK TO SAVEPOINT nectar_lead_index; RELEASE SAVEPOINT nectar_lead_index",
                )
                .await
            }
            Err(e) => Err(e),
        }
        .map_err(|e| errors::start_error(&e, &format!("creating index {}", table.lead_index)))
    }

    /// Create `qualified` if it is missing (and allowed), else check it has every column.
    async fn ensure_table(
        &self,
        tx: &mut PgTransaction<'_>,
        qualified: &str,
        create_sql: &str,
        expected: &[(&str, &str)],
        key: &str,
    ) -> Result<(), StartError> {
        let doing = format!("checking table {qualified}");
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(qualified)
            .fetch_one(&mut **tx)
            .await
            .map_err(|e| errors::start_error(&e, &doing))?;
        if !exists {
            if !self.create_tables {
                return Err(StartError::Config(format!(
                    "table {qualified} ({key}) does not exist and target.create_tables is false; create it with:\n{create_sql}"
                )));
            }
            tracing::info!(table = qualified, "creating table");
            execute_raw(tx, create_sql)
                .await
                .map_err(|e| errors::start_error(&e, &format!("creating table {qualified}")))?;
            return Ok(());
        }
        let columns: Vec<(String, String)> = sqlx::query_as(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
             WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped",
        )
        .bind(qualified)
        .fetch_all(&mut **tx)
        .await
        .map_err(|e| errors::start_error(&e, &doing))?;
        let columns: BTreeMap<String, String> = columns.into_iter().collect();
        let mut missing = Vec::new();
        for (name, ty) in expected {
            match columns.get(*name) {
                None => missing.push(format!(
                    "column \"{name}\" ({ty}, {}) is missing; add it with: ALTER TABLE {qualified} ADD COLUMN \"{name}\" {ty}",
                    if crate::config::STANDARD_COLUMNS.contains(name) || key == "target.offsets_table" {
                        format!("every table of {key} needs it")
                    } else {
                        format!("{key}.columns.{name}")
                    }
                )),
                Some(actual) if actual != ty => tracing::warn!(
                    table = qualified,
                    column = name,
                    "the column is {actual}, the sink writes {ty}: PostgreSQL converts each value on insert"
                ),
                Some(_) => {}
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(StartError::Config(format!("table {qualified}: {}", missing.join("; "))))
        }
    }
}

/// A statement without parameters, over the simple protocol (not prepared or cached).
async fn execute_raw(conn: &mut PgConnection, sql: &str) -> Result<(), sqlx::Error> {
    Executor::execute(conn, sqlx::raw_sql(sql)).await.map(|_| ())
}

fn table_error(table: &Table, e: &sqlx::Error) -> StartError {
    match errors::start_error(e, &format!("checking inserts into table {}", table.qualified)) {
        StartError::Config(m) if errors::code(e).as_deref() == Some("42P10") => StartError::Config(format!(
            "{m}: the sink needs a primary key or unique index on event_id to write each event once"
        )),
        other => other,
    }
}

fn refusal_reason(table: &Table, e: &sqlx::Error) -> String {
    let message = e
        .as_database_error()
        .map_or_else(|| e.to_string(), |db| db.message().to_owned());
    match errors::code(e) {
        Some(code) => format!(
            "PostgreSQL refused the row for table {}: {message} (SQLSTATE {code})",
            table.name
        ),
        None => format!("PostgreSQL refused the row for table {}: {message}", table.name),
    }
}

/// Reject `rejects` and retry every other item at once, without it.
fn answer_rejects(n: usize, rejects: Vec<(usize, String, String)>) -> Vec<ItemResult> {
    let count = rejects.len();
    let mut results: Vec<Option<ItemResult>> = vec![None; n];
    for (index, reason, response) in rejects {
        results[index] = Some(ItemResult::Reject { reason, response });
    }
    results
        .into_iter()
        .map(|r| {
            r.unwrap_or_else(|| ItemResult::Retry {
                reason: format!(
                    "not written: {count} other event(s) of the transaction cannot be written; retrying without them"
                ),
                after: Some(Duration::ZERO),
            })
        })
        .collect()
}

impl Connector for PostgresConnector {
    fn name(&self) -> &str {
        "postgres"
    }

    /// Connect (wrong password: [`StartError::Credentials`]; refused: `Unreachable`), create
    /// the schema and tables that are missing (with `target.create_tables`), check that
    /// existing ones have every column, and run an empty insert into each table and the
    /// offsets table so type, key and privilege problems show before any event is read.
    async fn start(&self) -> Result<(), StartError> {
        let connect = PgConnection::connect_with(&self.options);
        let mut conn = match tokio::time::timeout(self.connect_timeout, connect).await {
            Err(_) => {
                return Err(StartError::Unreachable(format!(
                    "no connection to PostgreSQL within {} ms (target.connect_timeout_ms)",
                    self.connect_timeout.as_millis()
                )));
            }
            Ok(Err(e)) => return Err(errors::start_error(&e, "connecting")),
            Ok(Ok(conn)) => conn,
        };
        let result = self.prepare(&mut conn).await;
        let _ = conn.close().await;
        result
    }

    /// A batch is one transaction.
    fn max_items(&self) -> usize {
        usize::MAX
    }

    async fn deliver(&self, delivery: Delivery<'_>) -> Result<Vec<ItemResult>, DeliveryError> {
        let items = delivery.items;
        let rows = self.mapping.rows(items.iter().map(|item| &*item.event));
        if !rows.rejects.is_empty() {
            // Nothing is written: the rest commits with the positions once the rejects are
            // dead-lettered.
            let rejects = rows
                .rejects
                .into_iter()
                .map(|(i, reason)| (i, reason, "not sent: the event cannot become a row".to_owned()))
                .collect();
            return Ok(answer_rejects(items.len(), rejects));
        }
        let error = match self.write(&rows, delivery.positions).await {
            Ok(()) => return Ok(vec![ItemResult::Delivered; items.len()]),
            Err(e) => e,
        };
        if errors::classify(&error) != Class::Row {
            return Err(self.explain(error).await);
        }
        tracing::info!(
            events = items.len(),
            "PostgreSQL refused the batch ({}); finding the rows it refuses",
            errors::describe(&error)
        );
        let refused = match self.find_refused_rows(&rows.tables).await {
            Ok(refused) => refused,
            Err(e) => return Err(self.explain(e).await),
        };
        if refused.is_empty() {
            return Err(DeliveryError::retry(format!(
                "PostgreSQL refused the batch ({}) but no row of it on its own; retrying",
                errors::describe(&error)
            )));
        }
        Ok(answer_rejects(items.len(), refused))
    }

    async fn stored_positions(
        &self,
        topic: &str,
        partitions: &[i32],
    ) -> Result<Option<BTreeMap<i32, i64>>, DeliveryError> {
        let rows: Vec<(i32, i64)> = sqlx::query_as(&self.offsets_select)
            .bind(&self.group)
            .bind(topic)
            .bind(partitions)
            .fetch_all(&self.pool)
            .await
            .map_err(|e| errors::delivery_error(&e))?;
        Ok(Some(rows.into_iter().collect()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn debug_never_prints_the_password() {
        let connector = PostgresConnector::new(
            &PostgresConfig::new("postgres://nectar:hunter2@db.internal:5432/nectar"),
            1,
            "g",
        )
        .unwrap();
        let debug = format!("{connector:?}");
        assert!(!debug.contains("hunter2"), "{debug}");
        assert!(debug.contains("db.internal"), "{debug}");
    }

    #[test]
    fn rejects_are_answered_and_the_rest_retried_at_once() {
        let results = answer_rejects(3, vec![(1, "bad".into(), "answer".into())]);
        assert_eq!(results[1], ItemResult::reject("bad", "answer"));
        for i in [0, 2] {
            assert!(
                matches!(&results[i], ItemResult::Retry { after: Some(d), reason } if d.is_zero() && reason.contains("1 other event")),
                "{:?}",
                results[i]
            );
        }
    }
}
