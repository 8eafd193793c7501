//! The `_bulk` request and the reading of its answer.
//!
//! Request: NDJSON (`Content-Type: application/x-ndjson`), one `index` action per event with
//! `_index` (rendered from the event) and `_id` = the event id, then the document. `index`
//! (not `create`) replaces a document with the same `_id`, so a redelivered event overwrites
//! its own earlier copy instead of failing or duplicating: the `_id` is the idempotency key.
//!
//! Answer: `200` with `errors` and one entry per action, in request order, each with its own
//! `status` and, when it failed, `error.type` / `error.reason` (Elasticsearch "Bulk API",
//! response body: <https://www.elastic.co/guide/en/elasticsearch/reference/current/docs-bulk.html#bulk-api-response-body>;
//! OpenSearch "Bulk": <https://docs.opensearch.org/latest/api-reference/document-apis/bulk/>).
//! Each entry is classified on its own:
//!
//! - `200`/`201`: delivered.
//! - `429` (`es_rejected_execution_exception`, the write queue is full), `408`, `5xx`: retry
//!   that item (a partial failure). If *every* item of the request failed with `429` or `503`,
//!   the cluster as a whole is overloaded or unavailable and the whole call is retried
//!   instead, which does not count against the items' attempts.
//! - `cluster_block_exception` (index read-only, disk flood stage): the whole call is
//!   retried: it is the cluster's state, not the event's fault.
//! - `401`/`403` `security_exception`: the credentials lack a privilege on the index:
//!   fatal, the sink stops without committing.
//! - `404` `index_not_found_exception` (automatic index creation is off): fatal, with the
//!   index name, so an operator creates it or allows it.
//! - any other `4xx` (`mapper_parsing_exception`, `document_parsing_exception`,
//!   `strict_dynamic_mapping_exception`, `illegal_argument_exception`,
//!   `invalid_index_name_exception`, ...): the cluster will never accept this document:
//!   rejected, with the error type and reason, to the dead-letter topic.

use nectar_sink::http::excerpt;
use nectar_sink::{DeliveryError, ItemResult};
use serde::Deserialize;
use serde_json::Value;

/// Longest `_id` both engines accept (OpenSearch 2.9+ and Elasticsearch), in bytes.
pub const MAX_ID_BYTES: usize = 512;

/// One document's two NDJSON lines.
#[derive(Debug, Clone, PartialEq)]
pub struct BulkEntry {
    pub id: String,
    pub index: String,
    /// `{"index":{...}}\n{document}\n`
    pub lines: String,
}

impl BulkEntry {
    pub fn new(index: &str, id: &str, document: &Value) -> Result<Self, serde_json::Error> {
        let action = serde_json::json!({ "index": { "_index": index, "_id": id } });
        // serde_json never writes a raw newline inside a value, so each value is one line.
        let mut lines = serde_json::to_string(&action)?;
        lines.push('\n');
        lines.push_str(&serde_json::to_string(document)?);
        lines.push('\n');
        Ok(Self {
            id: id.to_owned(),
            index: index.to_owned(),
            lines,
        })
    }
}

/// Split `entries` (by position) into request bodies of at most `max_bytes` each; an entry
/// larger than `max_bytes` goes alone.
pub fn chunks(entries: &[BulkEntry], max_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    for (i, entry) in entries.iter().enumerate() {
        if i > start && bytes + entry.lines.len() > max_bytes {
            out.push(start..i);
            start = i;
            bytes = 0;
        }
        bytes += entry.lines.len();
    }
    if start < entries.len() {
        out.push(start..entries.len());
    }
    out
}

#[derive(Debug, Deserialize)]
struct BulkResponse {
    #[serde(default)]
    errors: bool,
    items: Vec<serde_json::Map<String, Value>>,
}

/// What one entry of the answer means.
#[derive(Debug, Clone, PartialEq)]
enum Verdict {
    Item(ItemResult),
    /// The entry speaks for the whole cluster (blocked, overloaded for all, no privilege).
    Whole(DeliveryError),
}

/// Read a `200` answer to a `_bulk` request that carried `sent` (in order): one result per
/// entry, or the whole call's failure.
pub fn classify_response(body: &str, sent: &[&BulkEntry]) -> Result<Vec<ItemResult>, DeliveryError> {
    let response: BulkResponse = serde_json::from_str(body).map_err(|e| {
        DeliveryError::retry(format!(
            "the _bulk answer is not a bulk response ({e}): {}",
            excerpt(body)
        ))
    })?;
    if response.items.len() != sent.len() {
        return Err(DeliveryError::retry(format!(
            "the _bulk answer has {} items for {} documents",
            response.items.len(),
            sent.len()
        )));
    }
    let mut results = Vec::with_capacity(sent.len());
    let mut whole_retry = None;
    let mut overloaded_only = true;
    for (item, entry) in response.items.iter().zip(sent) {
        // `{"index": {...}}`: the single key is the action.
        let Some(Value::Object(result)) = item.get("index").or_else(|| item.values().next()) else {
            return Err(DeliveryError::retry(format!(
                "a _bulk answer item has no result: {}",
                excerpt(&Value::Object(item.clone()).to_string())
            )));
        };
        if let Some(id) = result.get("_id").and_then(Value::as_str)
            && id != entry.id
        {
            return Err(DeliveryError::retry(format!(
                "the _bulk answer is out of order: item for `{}` answered `{id}`",
                entry.id
            )));
        }
        let status = result.get("status").and_then(Value::as_u64).unwrap_or(0);
        overloaded_only &= status == 429 || status == 503;
        match classify_item(result, entry) {
            Verdict::Item(r) => results.push(r),
            Verdict::Whole(e @ DeliveryError::Fatal(_)) => return Err(e),
            Verdict::Whole(e) => {
                whole_retry.get_or_insert(e);
                results.push(ItemResult::retry("the whole request is retried"));
            }
        }
    }
    if let Some(e) = whole_retry {
        return Err(e);
    }
    if !response.errors && results.iter().any(|r| !matches!(r, ItemResult::Delivered)) {
        tracing::warn!("_bulk answered errors=false with failed items");
    }
    // Every item refused with 429 or 503: the cluster is overloaded or a shard is
    // unavailable, not these events. (Other 5xx stay per item, so a document that makes the
    // cluster fail every time is dead-lettered after its attempts instead of stalling the sink.)
    if let Some(ItemResult::Retry { reason, .. }) = results.first()
        && overloaded_only
    {
        return Err(DeliveryError::retry(format!(
            "every document of the _bulk request was refused for now, e.g. {reason}"
        )));
    }
    Ok(results)
}

fn classify_item(result: &serde_json::Map<String, Value>, entry: &BulkEntry) -> Verdict {
    let status = result.get("status").and_then(Value::as_u64).unwrap_or(0);
    if (200..300).contains(&status) {
        return Verdict::Item(ItemResult::Delivered);
    }
    let error = result.get("error");
    let error_type = error
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("unknown_error");
    let reason = describe(error);
    let index = result
        .get("_index")
        .and_then(Value::as_str)
        .unwrap_or(entry.index.as_str());
    if error_type == "cluster_block_exception" {
        return Verdict::Whole(DeliveryError::retry(format!(
            "index `{index}` is blocked (HTTP {status}): {reason}"
        )));
    }
    if status == 401 || (status == 403 && error_type == "security_exception") {
        return Verdict::Whole(DeliveryError::Fatal(format!(
            "credentials rejected: not allowed to write to index `{index}` (HTTP {status}): {reason}"
        )));
    }
    if status == 404 && error_type == "index_not_found_exception" {
        return Verdict::Whole(DeliveryError::Fatal(format!(
            "index `{index}` does not exist and the cluster does not create indices automatically \
             (action.auto_create_index): {reason}"
        )));
    }
    if status == 429 || status == 408 || !(200..500).contains(&status) {
        return Verdict::Item(ItemResult::retry(format!("HTTP {status} for `{}`: {reason}", entry.id)));
    }
    Verdict::Item(ItemResult::reject(
        format!("index `{index}` refused the document (HTTP {status}): {reason}"),
        excerpt(&Value::Object(result.clone()).to_string()),
    ))
}

/// `type: reason; caused by type: reason` from an error object.
fn describe(error: Option<&Value>) -> String {
    let Some(error) = error else {
        return "no error given".into();
    };
    if let Some(s) = error.as_str() {
        return s.to_owned();
    }
    let one = |e: &Value| {
        let ty = e.get("type").and_then(Value::as_str).unwrap_or("unknown_error");
        match e.get("reason").and_then(Value::as_str) {
            Some(reason) => format!("{ty}: {reason}"),
            None => ty.to_owned(),
        }
    };
    let mut s = one(error);
    if let Some(cause) = error.get("caused_by") {
        s.push_str("; caused by ");
        s.push_str(&one(cause));
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn entries(ids: &[&str]) -> Vec<BulkEntry> {
        ids.iter()
            .map(|id| BulkEntry::new("nectar-events-2024.01.01", id, &json!({"envelope": {"event_id": id}})).unwrap())
            .collect()
    }

    fn ok(id: &str, status: u16) -> Value {
        json!({ "index": {
            "_index": "nectar-events-2024.01.01", "_id": id, "_version": 1, "result": "created",
            "_shards": { "total": 2, "successful": 1, "failed": 0 }, "_seq_no": 0, "_primary_term": 1,
            "status": status
        }})
    }

    fn failed(id: &str, status: u16, ty: &str, reason: &str) -> Value {
        json!({ "index": {
            "_index": "nectar-events-2024.01.01", "_id": id, "status": status,
            "error": { "type": ty, "reason": reason, "index": "nectar-events-2024.01.01" }
        }})
    }

    fn answer(errors: bool, items: Vec<Value>) -> String {
        json!({ "took": 3, "errors": errors, "items": items }).to_string()
    }

    #[test]
    fn entry_is_an_index_action_with_the_event_id_then_the_document() {
        let e = BulkEntry::new("idx", "ev-1", &json!({"a": "line\nbreak"})).unwrap();
        let lines: Vec<&str> = e.lines.lines().collect();
        assert_eq!(lines.len(), 2, "{:?}", e.lines);
        assert_eq!(
            serde_json::from_str::<Value>(lines[0]).unwrap(),
            json!({"index": {"_index": "idx", "_id": "ev-1"}})
        );
        assert_eq!(
            serde_json::from_str::<Value>(lines[1]).unwrap(),
            json!({"a": "line\nbreak"})
        );
        assert!(e.lines.ends_with('\n'), "the body ends with a newline");
    }

    #[test]
    fn chunks_stay_under_the_byte_limit() {
        let e = entries(&["a", "b", "c", "d", "e"]);
        let one = e[0].lines.len();
        assert_eq!(chunks(&e, one * 2), vec![0..2, 2..4, 4..5]);
        assert_eq!(chunks(&e, one * 100), vec![0..5]);
        // Too large for any request: each goes alone rather than never.
        assert_eq!(chunks(&e, 1), vec![0..1, 1..2, 2..3, 3..4, 4..5]);
        assert!(chunks(&[], 10).is_empty());
    }

    #[test]
    fn all_created_or_updated_is_delivered() {
        let e = entries(&["a", "b"]);
        let sent: Vec<&BulkEntry> = e.iter().collect();
        let r = classify_response(&answer(false, vec![ok("a", 201), ok("b", 200)]), &sent).unwrap();
        assert_eq!(r, vec![ItemResult::Delivered, ItemResult::Delivered]);
    }

    #[test]
    fn partial_failure_retries_rejected_executions_and_rejects_mapping_errors() {
        let e = entries(&["a", "b", "c", "d", "e"]);
        let sent: Vec<&BulkEntry> = e.iter().collect();
        let body = answer(
            true,
            vec![
                ok("a", 201),
                failed(
                    "b",
                    429,
                    "es_rejected_execution_exception",
                    "rejected execution of coordinating operation",
                ),
                json!({ "index": {
                    "_index": "nectar-events-2024.01.01", "_id": "c", "status": 400,
                    "error": { "type": "mapper_parsing_exception", "reason": "failed to parse field [attributes.n] of type [long]",
                               "caused_by": { "type": "illegal_argument_exception", "reason": "For input string: \"x\"" } }
                }}),
                failed(
                    "d",
                    400,
                    "strict_dynamic_mapping_exception",
                    "mapping set to strict, dynamic introduction of [x] within [attributes] is not allowed",
                ),
                failed("e", 503, "unavailable_shards_exception", "primary shard is not active"),
            ],
        );
        let r = classify_response(&body, &sent).unwrap();
        assert_eq!(r[0], ItemResult::Delivered);
        assert!(
            matches!(&r[1], ItemResult::Retry { reason, after: None } if reason.contains("es_rejected_execution_exception"))
        );
        let ItemResult::Reject { reason, response } = &r[2] else {
            panic!("{:?}", r[2])
        };
        assert!(
            reason.contains("mapper_parsing_exception: failed to parse field [attributes.n]"),
            "{reason}"
        );
        assert!(reason.contains("caused by illegal_argument_exception"), "{reason}");
        assert!(reason.contains("nectar-events-2024.01.01"), "{reason}");
        assert!(response.contains("\"status\":400"), "{response}");
        assert!(
            matches!(&r[3], ItemResult::Reject { reason, .. } if reason.contains("strict_dynamic_mapping_exception"))
        );
        assert!(matches!(&r[4], ItemResult::Retry { .. }));
    }

    #[test]
    fn every_item_overloaded_retries_the_whole_call() {
        let e = entries(&["a", "b"]);
        let sent: Vec<&BulkEntry> = e.iter().collect();
        let body = answer(
            true,
            vec![
                failed("a", 429, "es_rejected_execution_exception", "queue full"),
                failed("b", 503, "unavailable_shards_exception", "primary shard is not active"),
            ],
        );
        assert!(
            matches!(classify_response(&body, &sent), Err(DeliveryError::Retry { reason, .. }) if reason.contains("queue full"))
        );
    }

    #[test]
    fn every_item_failing_with_500_stays_a_counted_item_retry() {
        let e = entries(&["a"]);
        let sent: Vec<&BulkEntry> = e.iter().collect();
        let body = answer(true, vec![failed("a", 500, "exception", "boom")]);
        let r = classify_response(&body, &sent).unwrap();
        assert!(matches!(&r[0], ItemResult::Retry { reason, .. } if reason.contains("boom")));
    }

    #[test]
    fn blocks_privileges_and_missing_indices_speak_for_the_whole_call() {
        let e = entries(&["a", "b"]);
        let sent: Vec<&BulkEntry> = e.iter().collect();
        let blocked = answer(
            true,
            vec![
                ok("a", 201),
                failed(
                    "b",
                    429,
                    "cluster_block_exception",
                    "index [x] blocked by: [TOO_MANY_REQUESTS/12/disk usage exceeded flood-stage watermark, index has read-only-allow-delete block];",
                ),
            ],
        );
        assert!(
            matches!(classify_response(&blocked, &sent), Err(DeliveryError::Retry { reason, .. }) if reason.contains("blocked"))
        );
        let forbidden = answer(
            true,
            vec![
                failed(
                    "a",
                    403,
                    "security_exception",
                    "action [indices:data/write/bulk[s]] is unauthorized for API key id [x]",
                ),
                ok("b", 201),
            ],
        );
        assert!(
            matches!(classify_response(&forbidden, &sent), Err(DeliveryError::Fatal(m)) if m.contains("credentials rejected"))
        );
        let missing = answer(
            true,
            vec![
                failed("a", 404, "index_not_found_exception", "no such index [x]"),
                ok("b", 201),
            ],
        );
        assert!(
            matches!(classify_response(&missing, &sent), Err(DeliveryError::Fatal(m)) if m.contains("auto_create_index"))
        );
    }

    #[test]
    fn answers_that_do_not_fit_the_request_are_retried() {
        let e = entries(&["a", "b"]);
        let sent: Vec<&BulkEntry> = e.iter().collect();
        assert!(matches!(
            classify_response("<html>", &sent),
            Err(DeliveryError::Retry { .. })
        ));
        assert!(matches!(
            classify_response(&answer(false, vec![ok("a", 201)]), &sent),
            Err(DeliveryError::Retry { reason, .. }) if reason.contains("1 items for 2")
        ));
        assert!(matches!(
            classify_response(&answer(false, vec![ok("b", 201), ok("a", 201)]), &sent),
            Err(DeliveryError::Retry { reason, .. }) if reason.contains("out of order")
        ));
    }
}
