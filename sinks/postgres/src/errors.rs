//! What a PostgreSQL error means for a delivery, in one place.
//!
//! Every answer is all-or-nothing per transaction, so an error is one of three things:
//! the whole delivery is worth another try ([`Class::Retry`]: the server is down, restarting,
//! overloaded, or the transaction lost a race), retrying cannot help ([`Class::Fatal`]:
//! credentials, permissions, a table or column that is gone), or one row's data is refused
//! ([`Class::Row`]: a data exception or a constraint), which the connector narrows down to
//! the rows that cause it. SQLSTATE codes:
//! <https://www.postgresql.org/docs/current/errcodes-appendix.html>.

use nectar_sink::DeliveryError;
use nectar_sink::StartError;

/// What an error means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Retry,
    Fatal,
    Row,
}

/// The meaning of a SQLSTATE.
pub fn classify_code(code: &str) -> Class {
    match code {
        // The ON CONFLICT target is missing: the table has no unique key on event_id.
        "42P10" => Class::Fatal,
        // Credentials and permissions.
        "28000" | "28P01" | "42501" => Class::Fatal,
        // The database was dropped under us.
        "57P04" => Class::Fatal,
        // Too large for an index row (a long text in a unique or indexed column).
        "54000" => Class::Row,
        _ => match &code[..code.len().min(2)] {
            // Data exceptions (bad value, out of range, NUL in text), constraint violations
            // (check, not-null, a unique key other than event_id, a foreign key).
            "22" | "23" => Class::Row,
            // Connection exceptions; transaction rollback (serialization failure 40001,
            // deadlock 40P01); insufficient resources (too many connections 53300, disk
            // full); object in use / lock not available; operator intervention (admin or
            // crash shutdown, cannot connect now, statement timeout or cancel); system errors
            // (I/O); a read-only transaction (connected to a standby after a failover).
            "08" | "40" | "53" | "55" | "57" | "58" | "25" | "XX" => Class::Retry,
            // Invalid authorization, catalog or schema names, syntax errors and undefined
            // objects (42P01 table, 42703 column), feature not supported: the configuration
            // does not match the database.
            "28" | "3D" | "3F" | "42" | "0A" | "2B" | "0P" => Class::Fatal,
            // Anything else: not the event's fault, so never dead-letter for it; the runtime
            // backs off and the failure shows in the metrics and logs.
            _ => Class::Retry,
        },
    }
}

/// The meaning of any sqlx error.
pub fn classify(e: &sqlx::Error) -> Class {
    match e {
        sqlx::Error::Database(db) => db.code().map_or(Class::Retry, |code| classify_code(&code)),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Class::Retry,
        // Decoding our own queries' results or a bad option: a bug or a broken setup.
        _ => Class::Fatal,
    }
}

/// The SQLSTATE of a database error.
pub fn code(e: &sqlx::Error) -> Option<String> {
    e.as_database_error().and_then(|db| db.code()).map(|c| c.into_owned())
}

/// One line for logs and reasons: the message, `(SQLSTATE xxxxx)`, and the detail and hint
/// when the server gave them.
pub fn describe(e: &sqlx::Error) -> String {
    match e {
        sqlx::Error::Database(db) => {
            let mut text = db.message().to_owned();
            if let Some(code) = db.code() {
                text.push_str(&format!(" (SQLSTATE {code})"));
            }
            if let Some(pg) = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>() {
                if let Some(detail) = pg.detail() {
                    text.push_str(&format!("; {detail}"));
                }
                if let Some(hint) = pg.hint() {
                    text.push_str(&format!("; hint: {hint}"));
                }
            }
            text
        }
        other => nectar_sink::http::error_chain(other),
    }
}

/// The whole-call error for `e` (which is not [`Class::Row`], or happened outside a row).
pub fn delivery_error(e: &sqlx::Error) -> DeliveryError {
    let text = describe(e);
    match (classify(e), code(e).as_deref()) {
        (Class::Retry, _) => DeliveryError::retry(format!("PostgreSQL: {text}")),
        (_, Some("28000" | "28P01")) => DeliveryError::Fatal(format!("PostgreSQL rejected the credentials: {text}")),
        (_, Some("42501")) => DeliveryError::Fatal(format!(
            "PostgreSQL denied a permission the sink needs (INSERT on its tables and the offsets table): {text}"
        )),
        (_, Some("42P01")) => DeliveryError::Fatal(format!(
            "a table the sink writes does not exist any more: {text}; restart the sink to create it (target.create_tables) or create it"
        )),
        (_, Some("42703")) => DeliveryError::Fatal(format!(
            "a column the sink writes does not exist any more: {text}; restart the sink to see which (the start check names them)"
        )),
        (_, Some("42P10")) => DeliveryError::Fatal(format!(
            "a table has no primary key or unique index on event_id, which the sink needs to write each event once: {text}"
        )),
        _ => DeliveryError::Fatal(format!("PostgreSQL: {text}")),
    }
}

/// The start error for `e`, met while connecting or preparing the tables.
pub fn start_error(e: &sqlx::Error, doing: &str) -> StartError {
    let text = describe(e);
    match code(e).as_deref() {
        Some("28000" | "28P01") => StartError::Credentials(format!("PostgreSQL: {text}")),
        Some("42501") => StartError::Credentials(format!("PostgreSQL denied a permission while {doing}: {text}")),
        Some("3D000") => StartError::Config(format!("PostgreSQL: {text} (target.url names the database)")),
        Some(_) if classify(e) == Class::Retry => StartError::Unreachable(format!("PostgreSQL while {doing}: {text}")),
        Some(_) => StartError::Config(format!("PostgreSQL while {doing}: {text}")),
        None if classify(e) == Class::Retry => StartError::Unreachable(format!("PostgreSQL: {text}")),
        None => StartError::Config(format!("PostgreSQL while {doing}: {text}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlstates_are_classified() {
        for code in [
            "40001", "40P01", "57P01", "57P02", "57P03", "57014", "53300", "53100", "08006", "25006", "55P03", "XX000",
        ] {
            assert_eq!(classify_code(code), Class::Retry, "{code}");
        }
        for code in [
            "28P01", "28000", "42501", "42P01", "42703", "42P10", "3D000", "3F000", "0A000", "57P04",
        ] {
            assert_eq!(classify_code(code), Class::Fatal, "{code}");
        }
        for code in [
            "23514", "23502", "23505", "23503", "22001", "22003", "22P02", "22P05", "22021", "22008", "54000",
        ] {
            assert_eq!(classify_code(code), Class::Row, "{code}");
        }
        assert_eq!(classify_code("P0001"), Class::Retry, "unknown: not the event's fault");
    }

    #[test]
    fn transport_failures_are_retried() {
        let refused = sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        assert_eq!(classify(&refused), Class::Retry);
        assert!(matches!(delivery_error(&refused), DeliveryError::Retry { .. }));
        assert!(matches!(
            start_error(&refused, "connecting"),
            StartError::Unreachable(_)
        ));
        assert_eq!(classify(&sqlx::Error::PoolTimedOut), Class::Retry);
        assert_eq!(classify(&sqlx::Error::RowNotFound), Class::Fatal);
    }
}
