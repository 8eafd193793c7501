//! GDPR erasure requests: `_refresh` then `_delete_by_query` of every document of the lead.
//!
//! The route processor sends every `lead.erasure_requested` ([`ERASURE`]) to the sinks of
//! `route.erasure_sinks`. For one, the connector deletes, from every index of the sink's
//! pattern (`target.index` up to its first placeholder, then `*`), the documents whose
//! `envelope.workspace_id` and `envelope.lead_key` (both `keyword` in the index template) are
//! the request's:
//!
//! 1. the documents of the delivery's events before the request are indexed first (one
//!    `_bulk`), so the delete sees them;
//! 2. `POST <pattern>/_refresh`: `_delete_by_query` searches a snapshot of what is refreshed,
//!    and documents indexed in the last second (this delivery's, the previous batch's) are
//!    not yet;
//! 3. `POST <pattern>/_delete_by_query?conflicts=proceed&refresh=true` with two `term`
//!    filters; `refresh=true` makes the deletions visible before anything else is indexed;
//! 4. the request itself is indexed as a document with the envelope only (no person, form,
//!    ...): the record that the lead was erased, and the delivery's later events after it.
//!
//! A cluster without `_delete_by_query` (it comes with the `reindex` module, which minimal
//! distributions such as OpenSearch's `integ-test-zip` leave out) answers "no handler found";
//! the connector then deletes the same documents itself, from then on: `_search` (the same
//! query, ids only, 1000 at a time) and a `_bulk` of `delete` actions with `refresh=true`,
//! until the search finds none.
//!
//! A failure of either request (transport, `5xx`, `429`, a `_delete_by_query` answer with
//! `failures` or `timed_out`) fails the whole delivery, which the runtime retries with
//! backoff: the documents sent before are overwritten with the same `_id`s and the delete runs
//! again, so a retried or redelivered erasure leaves the same documents. `401`/`403` stop the
//! sink (the credentials need `read` and `delete` (or `write`) and `maintenance` on the
//! indices).

use nectar_sink::DeliveryError;
use nectar_sink::http::excerpt;
use serde_json::{Value, json};

pub use nectar_core::events::{ERASURE, Lead};

/// The `_delete_by_query` body for `lead`: both envelope fields, exact (`term` on `keyword`).
pub fn lead_query(lead: &Lead) -> Value {
    json!({
        "query": {
            "bool": {
                "filter": [
                    { "term": { "envelope.workspace_id": lead.workspace_id } },
                    { "term": { "envelope.lead_key": lead.lead_key } },
                ]
            }
        }
    })
}

/// The path (after the base URL) of the `_refresh` before the delete.
pub fn refresh_path(pattern: &str) -> String {
    format!("{pattern}/_refresh?allow_no_indices=true&ignore_unavailable=true")
}

/// The path (after the base URL) of the `_delete_by_query`.
pub fn delete_path(pattern: &str) -> String {
    format!("{pattern}/_delete_by_query?conflicts=proceed&refresh=true&allow_no_indices=true&ignore_unavailable=true")
}

/// Whether an answer says the cluster has no such endpoint (Elasticsearch and OpenSearch
/// answer 400 or 405 `no handler found for uri [...]`, or 404 from a proxy).
pub fn no_such_endpoint(status: u16, body: &str) -> bool {
    matches!(status, 400 | 404 | 405) && body.contains("no handler found")
}

/// Documents per `_search` of the fallback.
pub const SEARCH_SIZE: usize = 1000;

/// The path of the fallback's `_search`.
pub fn search_path(pattern: &str) -> String {
    format!("{pattern}/_search?allow_no_indices=true&ignore_unavailable=true")
}

/// The fallback's `_search` body: the lead's documents, ids only.
pub fn search_body(lead: &Lead) -> Value {
    let mut body = lead_query(lead);
    body["size"] = json!(SEARCH_SIZE);
    body["_source"] = json!(false);
    body
}

/// `(index, id)` of every hit of a `_search` answer.
pub fn hits(body: &str) -> Result<Vec<(String, String)>, DeliveryError> {
    let answer: Value = serde_json::from_str(body)
        .map_err(|e| DeliveryError::retry(format!("the _search answer is not JSON ({e}): {}", excerpt(body))))?;
    if answer["timed_out"].as_bool() == Some(true) || answer["_shards"]["failed"].as_u64().unwrap_or(0) > 0 {
        return Err(DeliveryError::retry(format!(
            "the search for the lead's documents did not cover every shard: {}",
            excerpt(body)
        )));
    }
    let hits = answer["hits"]["hits"]
        .as_array()
        .ok_or_else(|| DeliveryError::retry(format!("the _search answer has no hits: {}", excerpt(body))))?;
    Ok(hits
        .iter()
        .filter_map(|h| Some((h["_index"].as_str()?.to_owned(), h["_id"].as_str()?.to_owned())))
        .collect())
}

/// The NDJSON `_bulk` body deleting `documents`.
pub fn delete_body(documents: &[(String, String)]) -> String {
    documents
        .iter()
        .map(|(index, id)| format!("{}\n", json!({ "delete": { "_index": index, "_id": id } })))
        .collect()
}

/// Read the answer to a `_bulk` of deletes: every item deleted or already gone (404).
pub fn classify_bulk_delete(body: &str) -> Result<(), DeliveryError> {
    let answer: Value = serde_json::from_str(body)
        .map_err(|e| DeliveryError::retry(format!("the _bulk answer is not JSON ({e}): {}", excerpt(body))))?;
    let items = answer["items"].as_array().cloned().unwrap_or_default();
    match items.iter().find(|item| {
        let status = item["delete"]["status"].as_u64().unwrap_or(0);
        !(200..300).contains(&status) && status != 404
    }) {
        Some(failed) => Err(DeliveryError::retry(format!(
            "a document of the lead was not deleted: {}",
            excerpt(&failed.to_string())
        ))),
        None => Ok(()),
    }
}

/// Read a `200` answer to `_delete_by_query`: the number of documents deleted, or a retry
/// when some were not (search or bulk `failures`, `timed_out`).
pub fn classify_delete(body: &str) -> Result<u64, DeliveryError> {
    let answer: Value = serde_json::from_str(body).map_err(|e| {
        DeliveryError::retry(format!(
            "the _delete_by_query answer is not JSON ({e}): {}",
            excerpt(body)
        ))
    })?;
    if answer["timed_out"].as_bool() == Some(true) {
        return Err(DeliveryError::retry(format!(
            "_delete_by_query timed out: {}",
            excerpt(body)
        )));
    }
    if answer["failures"].as_array().is_some_and(|f| !f.is_empty()) {
        return Err(DeliveryError::retry(format!(
            "_delete_by_query left documents of the lead: {}",
            excerpt(body)
        )));
    }
    answer["deleted"].as_u64().ok_or_else(|| {
        DeliveryError::retry(format!(
            "the _delete_by_query answer has no `deleted`: {}",
            excerpt(body)
        ))
    })
}

#[cfg(test)]
mod tests {
    use nectar_core::events::{Envelope, Event, Person};

    use super::*;

    fn request(lead_key: Option<&str>) -> Event {
        let mut event = Event::new(Envelope {
            event_id: "x1".into(),
            event_type: ERASURE.into(),
            occurred_at: 1_700_000_000_000,
            received_at: 1_700_000_000_000,
            source: "form:erasure".into(),
            workspace_id: "acme".into(),
            lead_key: lead_key.map(str::to_owned),
            trace_parent: None,
            consent: None,
        });
        event.person = Some(Person {
            email: Some("ada@example.com".into()),
            ..Person::default()
        });
        event
    }

    #[test]
    fn the_query_is_two_exact_terms_on_the_envelope() {
        let lead = request(Some("k1")).lead_to_erase().unwrap();
        assert_eq!(
            lead_query(&lead),
            json!({"query": {"bool": {"filter": [
                {"term": {"envelope.workspace_id": "acme"}},
                {"term": {"envelope.lead_key": "k1"}}
            ]}}})
        );
        assert_eq!(
            delete_path("nectar-events-*"),
            "nectar-events-*/_delete_by_query?conflicts=proceed&refresh=true&allow_no_indices=true&ignore_unavailable=true"
        );
        assert_eq!(
            refresh_path("nectar-events-*"),
            "nectar-events-*/_refresh?allow_no_indices=true&ignore_unavailable=true"
        );
    }

    #[test]
    fn a_request_without_a_lead_key_names_no_lead() {
        for key in [None, Some(""), Some("  ")] {
            let err = request(key).lead_to_erase().unwrap_err();
            assert!(err.contains("without envelope.lead_key"), "{err}");
        }
    }

    #[test]
    fn the_recorded_request_keeps_the_envelope_only() {
        let event = request(Some("k1"));
        assert!(event.is_erasure());
        let recorded = event.erasure_record();
        assert_eq!(recorded.envelope, event.envelope);
        assert_eq!(recorded.person, None);
        let doc = crate::mapping::document(&recorded).unwrap();
        assert!(!doc.to_string().contains("ada@example.com"), "{doc}");
    }

    #[test]
    fn without_delete_by_query_the_lead_is_searched_and_deleted_by_id() {
        assert!(no_such_endpoint(
            400,
            r#"{"error":"no handler found for uri [/x-*/_delete_by_query] and method [POST]"}"#
        ));
        assert!(!no_such_endpoint(400, r#"{"error":{"type":"parsing_exception"}}"#));
        let lead = request(Some("k1")).lead_to_erase().unwrap();
        let body = search_body(&lead);
        assert_eq!(body["size"], 1000);
        assert_eq!(body["_source"], false);
        assert_eq!(body["query"], lead_query(&lead)["query"]);
        let found = hits(
            r#"{"timed_out":false,"_shards":{"total":1,"successful":1,"failed":0},
                "hits":{"hits":[{"_index":"i-1","_id":"a"},{"_index":"i-2","_id":"b"}]}}"#,
        )
        .unwrap();
        assert_eq!(
            found,
            [("i-1".to_owned(), "a".to_owned()), ("i-2".to_owned(), "b".to_owned())]
        );
        assert!(hits(r#"{"_shards":{"failed":1},"hits":{"hits":[]}}"#).is_err());
        assert_eq!(
            delete_body(&found),
            "{\"delete\":{\"_id\":\"a\",\"_index\":\"i-1\"}}\n{\"delete\":{\"_id\":\"b\",\"_index\":\"i-2\"}}\n"
        );
        assert_eq!(
            classify_bulk_delete(r#"{"items":[{"delete":{"status":200}},{"delete":{"status":404}}]}"#),
            Ok(())
        );
        assert!(classify_bulk_delete(r#"{"items":[{"delete":{"status":429}}]}"#).is_err());
    }

    #[test]
    fn delete_answers_are_read() {
        assert_eq!(
            classify_delete(r#"{"took":3,"timed_out":false,"deleted":4,"version_conflicts":1,"failures":[]}"#),
            Ok(4)
        );
        assert!(matches!(
            classify_delete(r#"{"timed_out":true,"deleted":1,"failures":[]}"#),
            Err(DeliveryError::Retry { reason, .. }) if reason.contains("timed out")
        ));
        assert!(matches!(
            classify_delete(r#"{"timed_out":false,"deleted":1,"failures":[{"shard":0,"reason":{"type":"x"}}]}"#),
            Err(DeliveryError::Retry { reason, .. }) if reason.contains("left documents")
        ));
        assert!(matches!(classify_delete("<html>"), Err(DeliveryError::Retry { .. })));
    }
}
