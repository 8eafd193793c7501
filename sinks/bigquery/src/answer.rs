//! Reading BigQuery's answers: one place that decides retry, reject or stop.
//!
//! - `tabledata.insertAll` answers 200 with `insertErrors[]` for the rows it did not insert
//!   (<https://cloud.google.com/bigquery/docs/reference/rest/v2/tabledata/insertAll>): each
//!   `{index, errors: [ErrorProto {reason, location, message}]}`. Reason `invalid`: the row
//!   does not fit the table and never will (→ dead letter, with the message and location).
//!   Reason `stopped`: a valid row not inserted because another row of the request was invalid
//!   and `skipInvalidRows` was false (→ retry it alone). `timeout`, `backendError` and any
//!   other reason: a transient failure of that row (→ retry).
//! - Whole-request errors are `{"error": {code, message, errors: [{reason}], status}}`
//!   (<https://cloud.google.com/bigquery/docs/error-messages>): 5xx, 429 and 403 with reason
//!   `rateLimitExceeded` or `quotaExceeded` are retried (BigQuery reports its quotas as
//!   403s); 401 means the token expired or was revoked (refresh once, then stop); other 403s
//!   (`accessDenied`, `billingNotEnabled`, ...) stop the sink; 404 `notFound` means the table
//!   or dataset is gone (stop: restart recreates it); 400 means the request itself was refused.

use nectar_sink::http::{classify_status, excerpt, retry_after};
use nectar_sink::{DeliveryError, ItemResult};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use serde::{Deserialize, Serialize};

/// `ErrorProto`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorProto {
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub location: String,
    #[serde(default)]
    pub debug_info: String,
    #[serde(default)]
    pub message: String,
}

/// One entry of `insertErrors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InsertError {
    pub index: u64,
    #[serde(default)]
    pub errors: Vec<ErrorProto>,
}

/// `TableDataInsertAllResponse`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InsertAllResponse {
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub insert_errors: Vec<InsertError>,
}

/// Google's error envelope.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ApiError {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub errors: Vec<ErrorProto>,
    #[serde(default)]
    pub status: String,
}

#[derive(Deserialize)]
struct ApiErrorBody {
    error: ApiError,
}

/// The `error` of a failed call, if the body has one.
pub fn api_error(body: &str) -> Option<ApiError> {
    serde_json::from_str::<ApiErrorBody>(body).ok().map(|b| b.error)
}

impl ApiError {
    /// The first `reason`, e.g. `notFound`, `rateLimitExceeded`.
    pub fn reason(&self) -> &str {
        self.errors.first().map(|e| e.reason.as_str()).unwrap_or("")
    }

    fn summary(&self) -> String {
        match self.reason() {
            "" => self.message.clone(),
            reason => format!("{reason}: {}", self.message),
        }
    }
}

/// Reasons of a 403 that mean "slow down", not "forbidden".
pub fn is_quota_reason(reason: &str) -> bool {
    matches!(reason, "rateLimitExceeded" | "quotaExceeded")
}

/// What an `insertAll` answer means.
#[derive(Debug, Clone, PartialEq)]
pub enum InsertAnswer {
    /// One result per row of the request, in order.
    Rows(Vec<ItemResult>),
    /// The whole request failed.
    Whole(DeliveryError),
    /// 401: the access token was not accepted.
    Unauthorized(String),
    /// 400/413: the request was refused as a whole; the message says why.
    BadRequest(String),
}

/// Classify the answer to an `insertAll` of `rows` rows into `table` (`project:dataset.table`).
pub fn read_insert_answer(
    status: StatusCode,
    headers: &HeaderMap,
    body: &str,
    rows: usize,
    table: &str,
) -> InsertAnswer {
    if status.is_success() {
        return match serde_json::from_str::<InsertAllResponse>(body) {
            Ok(answer) => rows_results(&answer, rows),
            // A 2xx we cannot read may have inserted the rows: resending them is deduplicated
            // by insertId (best effort) and is the only way not to lose them.
            Err(e) => InsertAnswer::Whole(DeliveryError::retry(format!(
                "unreadable insertAll answer ({e}): {}",
                excerpt(body)
            ))),
        };
    }
    let error = api_error(body).unwrap_or_default();
    let detail = if error.message.is_empty() {
        excerpt(body)
    } else {
        error.summary()
    };
    match status {
        StatusCode::UNAUTHORIZED => InsertAnswer::Unauthorized(detail),
        StatusCode::FORBIDDEN if is_quota_reason(error.reason()) => InsertAnswer::Whole(DeliveryError::Retry {
            reason: format!("BigQuery quota (HTTP 403 {detail})"),
            after: retry_after(headers),
        }),
        StatusCode::FORBIDDEN => InsertAnswer::Whole(DeliveryError::Fatal(format!(
            "credentials rejected: the service account may not stream into {table} (HTTP 403 {detail}); \
             it needs bigquery.tables.updateData on the table"
        ))),
        StatusCode::NOT_FOUND => InsertAnswer::Whole(DeliveryError::Fatal(format!(
            "{table} was not found (HTTP 404 {detail}); restart the sink to create it again \
             (target.create_table) or fix target.project/dataset/table"
        ))),
        StatusCode::BAD_REQUEST | StatusCode::PAYLOAD_TOO_LARGE => {
            InsertAnswer::BadRequest(format!("HTTP {} {detail}", status.as_u16()))
        }
        _ => match classify_status(status, headers, body) {
            Some(e) => InsertAnswer::Whole(e),
            None => InsertAnswer::Whole(DeliveryError::Fatal(format!(
                "unexpected insertAll answer HTTP {}: {}",
                status.as_u16(),
                excerpt(body)
            ))),
        },
    }
}

fn rows_results(answer: &InsertAllResponse, rows: usize) -> InsertAnswer {
    let mut results = vec![ItemResult::Delivered; rows];
    for entry in &answer.insert_errors {
        let Some(slot) = usize::try_from(entry.index).ok().filter(|i| *i < rows) else {
            return InsertAnswer::Whole(DeliveryError::retry(format!(
                "insertAll answered an error for row {} of a {rows}-row request",
                entry.index
            )));
        };
        results[slot] = row_result(entry);
    }
    InsertAnswer::Rows(results)
}

/// The meaning of one row's errors.
pub fn row_result(entry: &InsertError) -> ItemResult {
    let response = serde_json::to_string(entry).unwrap_or_default();
    if let Some(invalid) = entry.errors.iter().find(|e| e.reason == "invalid") {
        let location = if invalid.location.is_empty() {
            String::new()
        } else {
            format!(" (at `{}`)", invalid.location)
        };
        return ItemResult::reject(
            format!("BigQuery refused the row: {}{location}", invalid.message),
            response,
        );
    }
    if entry.errors.iter().all(|e| e.reason == "stopped") {
        return ItemResult::retry("not inserted: another row of the request was invalid (reason `stopped`)");
    }
    let first = entry
        .errors
        .iter()
        .find(|e| e.reason != "stopped")
        .cloned()
        .unwrap_or_default();
    ItemResult::retry(format!("row not inserted ({}): {}", first.reason, first.message))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderValue, RETRY_AFTER};
    use std::time::Duration;

    const TABLE: &str = "p:d.events";

    fn read(status: u16, body: &str, rows: usize) -> InsertAnswer {
        read_insert_answer(
            StatusCode::from_u16(status).unwrap(),
            &HeaderMap::new(),
            body,
            rows,
            TABLE,
        )
    }

    #[test]
    fn a_clean_answer_delivers_every_row() {
        let answer = read(200, r#"{"kind": "bigquery#tableDataInsertAllResponse"}"#, 3);
        assert_eq!(answer, InsertAnswer::Rows(vec![ItemResult::Delivered; 3]));
    }

    #[test]
    fn invalid_rows_are_rejected_stopped_and_transient_rows_retried() {
        let body = r#"{
          "kind": "bigquery#tableDataInsertAllResponse",
          "insertErrors": [
            {"index": 0, "errors": [{"reason": "stopped", "location": "", "debugInfo": "", "message": ""}]},
            {"index": 1, "errors": [{"reason": "invalid", "location": "person.age", "debugInfo": "", "message": "no such field: person.age."}]},
            {"index": 3, "errors": [{"reason": "timeout", "location": "", "debugInfo": "", "message": "The operation timed out."}]},
            {"index": 4, "errors": [{"reason": "backendError", "message": "Backend error. Please try again."}]}
          ]
        }"#;
        let InsertAnswer::Rows(results) = read(200, body, 5) else {
            panic!("per-row results")
        };
        assert!(matches!(&results[0], ItemResult::Retry { reason, .. } if reason.contains("stopped")));
        match &results[1] {
            ItemResult::Reject { reason, response } => {
                assert_eq!(
                    reason,
                    "BigQuery refused the row: no such field: person.age. (at `person.age`)"
                );
                assert!(response.contains("\"index\":1"), "{response}");
            }
            other => panic!("rejected, got {other:?}"),
        }
        assert_eq!(results[2], ItemResult::Delivered);
        assert!(matches!(&results[3], ItemResult::Retry { reason, .. } if reason.contains("timeout")));
        assert!(matches!(&results[4], ItemResult::Retry { reason, .. } if reason.contains("backendError")));
    }

    #[test]
    fn an_error_for_a_row_that_was_not_sent_retries_the_request() {
        let body = r#"{"insertErrors": [{"index": 7, "errors": [{"reason": "invalid"}]}]}"#;
        assert!(matches!(
            read(200, body, 2),
            InsertAnswer::Whole(DeliveryError::Retry { .. })
        ));
    }

    fn google_error(code: u16, reason: &str, message: &str) -> String {
        serde_json::json!({"error": {"code": code, "message": message,
            "errors": [{"message": message, "domain": "global", "reason": reason}], "status": "X"}})
        .to_string()
    }

    #[test]
    fn bigquery_quota_403s_are_retried_other_403s_stop_the_sink() {
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        for reason in ["rateLimitExceeded", "quotaExceeded"] {
            let body = google_error(403, reason, "Exceeded rate limits: too many requests");
            let answer = read_insert_answer(StatusCode::FORBIDDEN, &headers, &body, 2, TABLE);
            assert_eq!(
                answer,
                InsertAnswer::Whole(DeliveryError::Retry {
                    reason: format!("BigQuery quota (HTTP 403 {reason}: Exceeded rate limits: too many requests)"),
                    after: Some(Duration::from_secs(7))
                })
            );
        }
        let body = google_error(403, "accessDenied", "Access Denied: Table p:d.events");
        match read(403, &body, 2) {
            InsertAnswer::Whole(DeliveryError::Fatal(m)) => {
                assert!(m.starts_with("credentials rejected"), "{m}");
                assert!(m.contains("accessDenied"), "{m}");
            }
            other => panic!("fatal, got {other:?}"),
        }
    }

    #[test]
    fn statuses_of_the_whole_request() {
        let not_found = google_error(404, "notFound", "Not found: Table p:d.events");
        assert!(
            matches!(read(404, &not_found, 1), InsertAnswer::Whole(DeliveryError::Fatal(m)) if m.contains("p:d.events was not found"))
        );
        assert!(
            matches!(read(401, &google_error(401, "authError", "Invalid Credentials"), 1), InsertAnswer::Unauthorized(m) if m.contains("Invalid Credentials"))
        );
        assert!(matches!(
            read(500, &google_error(500, "backendError", "x"), 1),
            InsertAnswer::Whole(DeliveryError::Retry { .. })
        ));
        let mut headers = HeaderMap::new();
        headers.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(
            read_insert_answer(StatusCode::TOO_MANY_REQUESTS, &headers, "{}", 1, TABLE),
            InsertAnswer::Whole(DeliveryError::Retry {
                reason: "rate limited (HTTP 429): {}".into(),
                after: Some(Duration::from_secs(3))
            })
        );
        let too_big = google_error(
            400,
            "badRequest",
            "Request payload size exceeds the limit: 10485760 bytes.",
        );
        assert!(matches!(read(400, &too_big, 9), InsertAnswer::BadRequest(m) if m.contains("exceeds the limit")));
        assert!(matches!(
            read(200, "<html>", 1),
            InsertAnswer::Whole(DeliveryError::Retry { .. })
        ));
        assert!(matches!(
            read(409, "{}", 1),
            InsertAnswer::Whole(DeliveryError::Fatal(_))
        ));
    }
}
