//! Building `tabledata.insertAll` requests: one row per event with `insertId` = the event
//! id, split into bodies under BigQuery's 10 MB request limit.

use std::ops::Range;

use serde::Serialize;
use serde_json::{Map, Value as Json};
use sha2::{Digest, Sha256};

/// BigQuery's limit on an `insertId` (<https://cloud.google.com/bigquery/quotas#streaming_inserts>).
pub const MAX_INSERT_ID: usize = 128;

/// The `insertId` of an event: its id, or, for an id over BigQuery's 128 characters, a
/// SHA-256 of it (still deterministic, so redeliveries deduplicate).
pub fn insert_id(event_id: &str) -> String {
    if event_id.len() <= MAX_INSERT_ID {
        event_id.to_owned()
    } else {
        format!("sha256:{}", hex::encode(Sha256::digest(event_id.as_bytes())))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Row<'a> {
    insert_id: &'a str,
    json: &'a Map<String, Json>,
}

/// One row of a request body, serialized: `{"insertId": ..., "json": {...}}`.
pub fn row_text(insert_id: &str, json: &Map<String, Json>) -> String {
    serde_json::to_string(&Row { insert_id, json }).unwrap_or_default()
}

/// The request body around already-serialized rows.
pub fn body<'a>(
    rows: impl IntoIterator<Item = &'a str>,
    skip_invalid_rows: bool,
    ignore_unknown_values: bool,
) -> String {
    let mut body = body_head(skip_invalid_rows, ignore_unknown_values);
    for (i, row) in rows.into_iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(row);
    }
    body.push_str("]}");
    body
}

fn body_head(skip_invalid_rows: bool, ignore_unknown_values: bool) -> String {
    format!(
        "{{\"kind\":\"bigquery#tableDataInsertAllRequest\",\"skipInvalidRows\":{skip_invalid_rows},\"ignoreUnknownValues\":{ignore_unknown_values},\"rows\":["
    )
}

/// Bytes of a body around its rows (head, `]}`), the most it takes.
pub fn body_overhead() -> usize {
    body_head(false, false).len() + 2
}

/// Split rows of `sizes` bytes into consecutive runs whose bodies stay within `max_bytes`
/// (rows plus the commas between them plus [`body_overhead`]). A row too large on its own
/// is its own run; the caller refuses it before sending.
pub fn plan(sizes: &[usize], max_bytes: usize) -> Vec<Range<usize>> {
    let budget = max_bytes.saturating_sub(body_overhead());
    let mut runs = Vec::new();
    let mut start = 0;
    let mut used = 0;
    for (i, size) in sizes.iter().enumerate() {
        let needed = if i == start { *size } else { used + 1 + size };
        if i > start && needed > budget {
            runs.push(start..i);
            start = i;
            used = *size;
        } else {
            used = needed;
        }
    }
    if start < sizes.len() {
        runs.push(start..sizes.len());
    }
    runs
}

/// Whether a single row fits in a request of `max_bytes`.
pub fn fits(size: usize, max_bytes: usize) -> bool {
    size + body_overhead() <= max_bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn insert_ids_are_event_ids_within_bigquerys_limit() {
        assert_eq!(
            insert_id("0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"),
            "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"
        );
        let long = "x".repeat(200);
        let id = insert_id(&long);
        assert!(id.len() <= MAX_INSERT_ID && id.starts_with("sha256:"));
        assert_eq!(id, insert_id(&long), "deterministic");
    }

    #[test]
    fn the_body_is_googles_request_shape() {
        let json = json!({"event_id": "e1", "occurred_at": "2023-11-14T22:13:20.123000Z"});
        let row = row_text("e1", json.as_object().unwrap());
        let text = body([row.as_str(), row.as_str()], true, false);
        let parsed: Json = serde_json::from_str(&text).expect("valid JSON");
        assert_eq!(
            parsed,
            json!({
                "kind": "bigquery#tableDataInsertAllRequest",
                "skipInvalidRows": true,
                "ignoreUnknownValues": false,
                "rows": [{"insertId": "e1", "json": json}, {"insertId": "e1", "json": json}]
            })
        );
        assert!(text.len() <= body_overhead() + 2 * row.len() + 1 + 3);
    }

    #[test]
    fn rows_are_split_under_the_byte_limit() {
        let max = body_overhead() + 100;
        assert_eq!(plan(&[10, 20, 30], max), vec![0..3]);
        // 40 + 1 + 40 = 81, + 1 + 40 > 100.
        assert_eq!(plan(&[40, 40, 40, 40], max), vec![0..2, 2..4]);
        assert_eq!(
            plan(&[150, 10, 10], max),
            vec![0..1, 1..3],
            "an oversized row stands alone"
        );
        assert_eq!(plan(&[], max), Vec::<Range<usize>>::new());
        assert!(fits(100, max) && !fits(101, max));
        // Exactly at the limit: 49 + 1 + 50 = 100.
        assert_eq!(plan(&[49, 50], max), vec![0..2]);
    }
}
