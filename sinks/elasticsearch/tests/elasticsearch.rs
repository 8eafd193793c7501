//! `nectar-sink-elasticsearch` against a real OpenSearch 2.x (`deploy/local/stack up --with
//! opensearch`, `NECTAR_OS_URL`, default `http://127.0.0.1:9200`), Kafka and the registry.
//! Faults the cluster cannot be told to produce (500s, 429s with `Retry-After`, rejected bulk
//! items, wrong credentials, a slow answer to crash into) come from the fault-injecting proxy
//! in `nectar_tests::proxy`, between the sink and OpenSearch.
//!
//! Counting: the sink writes each event as the document `_id` = event id, so a redelivery can
//! only overwrite, never add: "exactly once" here means every event has exactly one document
//! in all the test's indices together (one search over `<prefix>-*` counts hits per
//! `envelope.event_id`, so a copy in a second index would show as a duplicate), and nothing
//! else is there. Where a test makes the sink send an event twice, the document's `_version`
//! shows the second write replaced the first.
//!
//! Each test uses its own topics, consumer group, index prefix and index template, and deletes
//! its indices and template when it ends.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use nectar_core::events::Event;
use nectar_tests::proxy::{Failure, Proxy};
use nectar_tests::sink::{
    SinkTopics, dlq_summary, erasure_event, event_ids, for_lead, fresh_sink_topics, hit_event_id, opensearch_url,
    os_hits, produce_events, read_dlq, replay, run_to_exit, sample_events, sink_env,
};
use nectar_tests::{ServiceProcess, assert_exactly_once, wait_caught_up};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_nectar-sink-elasticsearch");

/// One test's indices (`<prefix>-%Y.%m.%d`) and index template (`<prefix>`), removed on drop.
struct Indices {
    prefix: String,
    http: reqwest::Client,
}

impl Indices {
    async fn new() -> Self {
        let indices = Self {
            prefix: format!("nectar-test-{}", uuid::Uuid::new_v4().simple()),
            http: reqwest::Client::new(),
        };
        let root = indices
            .http
            .get(opensearch_url())
            .send()
            .await
            .expect("OpenSearch is up (deploy/local/stack up --with opensearch)");
        assert!(root.status().is_success(), "GET / on OpenSearch: {}", root.status());
        indices
    }

    fn template(&self) -> String {
        format!("{}-%Y.%m.%d", self.prefix)
    }

    /// The sink's environment: these indices, one shard and no replica (single node).
    fn env(&self, topics: &nectar_tests::sink::SinkTopics, url: &str, extra: &[(&str, &str)]) -> Vec<(String, String)> {
        let template = self.template();
        let mut all = vec![
            ("NECTAR_TARGET__URL", url),
            ("NECTAR_TARGET__INDEX", template.as_str()),
            ("NECTAR_TARGET__NUMBER_OF_SHARDS", "1"),
            ("NECTAR_TARGET__NUMBER_OF_REPLICAS", "0"),
            ("NECTAR_LOG__FILTER", "info,nectar_sink=debug"),
        ];
        all.extend_from_slice(extra);
        sink_env(topics, &all)
    }

    /// Every document in the test's indices: event id → the indices holding it (one entry
    /// per document) and the highest `_version` seen.
    async fn documents(&self) -> (HashMap<String, Vec<String>>, HashMap<String, i64>) {
        let hits = os_hits(
            &self.http,
            &self.prefix,
            json!({ "version": true, "_source": ["envelope.event_id"] }),
        )
        .await;
        let mut where_ = HashMap::<String, Vec<String>>::new();
        let mut versions = HashMap::new();
        for hit in hits {
            let id = hit_event_id(&hit);
            where_
                .entry(id.clone())
                .or_default()
                .push(hit["_index"].as_str().unwrap_or("?").to_owned());
            let version = hit["_version"].as_i64().unwrap_or(0);
            let v = versions.entry(id).or_insert(version);
            *v = (*v).max(version);
        }
        (where_, versions)
    }

    /// Every document's `_source` by `_id`.
    async fn sources(&self) -> HashMap<String, Value> {
        os_hits(&self.http, &self.prefix, json!({}))
            .await
            .into_iter()
            .map(|hit| (hit["_id"].as_str().unwrap_or("?").to_owned(), hit["_source"].clone()))
            .collect()
    }

    /// Documents per event id (a document in two indices counts twice).
    async fn counts(&self) -> HashMap<String, usize> {
        let (where_, _) = self.documents().await;
        where_.into_iter().map(|(id, indices)| (id, indices.len())).collect()
    }

    async fn assert_exactly_once(&self, expected: &[String]) {
        let (where_, _) = self.documents().await;
        let two_indices: Vec<_> = where_.iter().filter(|(_, i)| i.len() > 1).take(3).collect();
        assert!(two_indices.is_empty(), "events written to two indices: {two_indices:?}");
        let counts = where_.into_iter().map(|(id, indices)| (id, indices.len())).collect();
        assert_exactly_once(expected, &counts);
    }

    async fn put(&self, path: &str, body: Value) -> Value {
        let answer = self
            .http
            .put(format!("{}/{path}", opensearch_url()))
            .json(&body)
            .send()
            .await
            .expect("PUT");
        let status = answer.status();
        let body: Value = answer.json().await.unwrap_or_default();
        assert!(status.is_success(), "PUT {path}: {status} {body}");
        body
    }

    async fn delete(&self, path: &str) {
        let answer = self
            .http
            .delete(format!("{}/{path}", opensearch_url()))
            .send()
            .await
            .expect("DELETE");
        assert!(answer.status().is_success(), "DELETE {path}: {}", answer.status());
    }
}

impl Drop for Indices {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        // Drop cannot await; a thread with its own runtime does the cleanup.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async {
                let http = reqwest::Client::new();
                let base = opensearch_url();
                let _ = http.delete(format!("{base}/{prefix}-*")).send().await;
                let _ = http.delete(format!("{base}/_index_template/{prefix}")).send().await;
            });
        })
        .join();
    }
}

/// Wait until the sink's group has committed everything on the delivery topic.
async fn caught_up(topics: &nectar_tests::sink::SinkTopics, sink: &mut ServiceProcess) {
    wait_caught_up(&topics.group, std::slice::from_ref(&topics.deliver), &mut [sink]).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_batch_and_restart_leave_every_event_once() {
    let indices = Indices::new().await;
    let topics = fresh_sink_topics("elasticsearch").await;
    let events = sample_events(1500, "crash");
    produce_events(&topics.deliver, &events).await;
    let proxy = Proxy::start(&opensearch_url()).await;
    // Answers come 400 ms after OpenSearch indexed the batch: a kill in that window leaves
    // documents in the index whose offsets were never committed.
    proxy.set_delay(Duration::from_millis(400));
    let env = indices.env(&topics, proxy.url(), &[("NECTAR_SINK__MAX_BATCH", "100")]);
    let mut sink = ServiceProcess::start(BIN, env);

    let mut killed_in_flight: Vec<String> = Vec::new();
    for round in 0..2 {
        let seen = proxy.bulk_requests().len();
        // Kill while a _bulk OpenSearch already answered is held back from the sink.
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        loop {
            let pending: Vec<_> = proxy
                .bulk_requests()
                .into_iter()
                .skip(seen)
                .filter(|r| r.forwarded && r.status == 0)
                .collect();
            if let Some(r) = pending.first() {
                sink.kill9();
                killed_in_flight.extend(r.ids.iter().cloned());
                break;
            }
            if let Some(status) = sink.exited() {
                panic!("the sink exited with {status}:\n{}", sink.log());
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no _bulk in flight (round {round}):\n{}",
                sink.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        sink.restart();
    }
    proxy.set_delay(Duration::ZERO);
    caught_up(&topics, &mut sink).await;

    indices.assert_exactly_once(&event_ids(&events)).await;
    // The batches in flight at the kills were indexed, not committed, and sent again: their
    // documents were overwritten (version 2+), not duplicated.
    let sent: HashMap<String, usize> =
        proxy
            .bulk_requests()
            .iter()
            .flat_map(|r| r.ids.clone())
            .fold(HashMap::new(), |mut m, id| {
                *m.entry(id).or_default() += 1;
                m
            });
    let (_, versions) = indices.documents().await;
    assert!(!killed_in_flight.is_empty());
    for id in &killed_in_flight {
        assert!(sent[id] >= 2, "{id} was in flight at a kill and sent again");
        assert!(versions[id] >= 2, "{id} was overwritten by the redelivery");
    }
    assert!(sink.exited().is_none(), "{}", sink.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn server_errors_then_429s_lose_nothing_and_retry_after_is_honoured() {
    let indices = Indices::new().await;
    let topics = fresh_sink_topics("elasticsearch").await;
    let events = sample_events(300, "outage");
    produce_events(&topics.deliver, &events).await;
    let proxy = Proxy::start(&opensearch_url()).await;
    proxy.fail_next(3, Failure::status(500, "_bulk"));
    proxy.fail_next(1, Failure::status(503, "_bulk"));
    proxy.fail_next(2, Failure::status(429, "_bulk").retry_after("2"));
    let env = indices.env(&topics, proxy.url(), &[]);
    let mut sink = ServiceProcess::start(BIN, env);
    caught_up(&topics, &mut sink).await;

    indices.assert_exactly_once(&event_ids(&events)).await;
    let bulks = proxy.bulk_requests();
    let statuses: Vec<u16> = bulks.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 500).count(), 3, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 503).count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 2, "{statuses:?}");
    // After each 429 with Retry-After: 2, the same events came back no earlier than 2 s later.
    for (i, throttled) in bulks.iter().enumerate().filter(|(_, r)| r.status == 429) {
        let ids: HashSet<&String> = throttled.ids.iter().collect();
        let next = bulks[i + 1..]
            .iter()
            .find(|r| r.ids.iter().any(|id| ids.contains(id)))
            .expect("the throttled events were sent again");
        let waited = next.at - throttled.at;
        assert!(
            waited >= Duration::from_secs(2),
            "retried after {waited:?}, before Retry-After: 2"
        );
    }
    assert!(sink.exited().is_none(), "{}", sink.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn partial_failure_retries_only_the_rejected_items() {
    let indices = Indices::new().await;
    let topics = fresh_sink_topics("elasticsearch").await;
    let events = sample_events(120, "partial");
    produce_events(&topics.deliver, &events).await;
    let proxy = Proxy::start(&opensearch_url()).await;
    proxy.fail_bulk_items_once(10);
    let env = indices.env(&topics, proxy.url(), &[]);
    let mut sink = ServiceProcess::start(BIN, env);
    caught_up(&topics, &mut sink).await;

    indices.assert_exactly_once(&event_ids(&events)).await;
    let bulks = proxy.bulk_requests();
    let (at, failed) = bulks
        .iter()
        .enumerate()
        .find(|(_, r)| !r.rewritten.is_empty())
        .map(|(i, r)| (i, r.rewritten.clone()))
        .expect("the proxy rewrote some items");
    assert!(
        failed.len() > 1 && failed.len() < bulks[at].ids.len(),
        "a partial failure"
    );
    let failed: HashSet<String> = failed.into_iter().collect();
    let retries: Vec<_> = bulks[at + 1..]
        .iter()
        .filter(|r| r.ids.iter().any(|id| failed.contains(id)))
        .collect();
    assert!(!retries.is_empty(), "the failed items were retried");
    let mut retried = HashSet::new();
    for r in &retries {
        for id in &r.ids {
            assert!(failed.contains(id), "a retry carried {id}, which had been delivered");
            retried.insert(id.clone());
        }
    }
    assert_eq!(retried, failed, "every failed item was retried");
    assert!(sink.exited().is_none(), "{}", sink.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_refused_document_is_dead_lettered_and_replayed_once_fixed() {
    let indices = Indices::new().await;
    let topics = fresh_sink_topics("elasticsearch").await;
    let mut events = sample_events(40, "dlq");
    // One event belongs to a day whose index an operator created with a strict mapping that
    // allows no field at all: OpenSearch refuses that document (and only that one).
    let bad: &mut Event = &mut events[7];
    bad.envelope.occurred_at = 1_577_880_000_000; // 2020-01-01T12:00:00Z
    let bad_id = bad.envelope.event_id.clone();
    let strict_index = format!("{}-2020.01.01", indices.prefix);
    indices
        .put(
            &strict_index,
            json!({ "settings": { "number_of_replicas": 0 }, "mappings": { "dynamic": "strict", "properties": {} } }),
        )
        .await;
    produce_events(&topics.deliver, &events).await;
    let env = indices.env(&topics, &opensearch_url(), &[]);
    let mut sink = ServiceProcess::start(BIN, env.clone());
    caught_up(&topics, &mut sink).await;

    let dead = read_dlq(&topics.dlq, 1).await;
    assert_eq!(dead.len(), 1, "exactly the refused event is dead-lettered");
    let summary = &dlq_summary(&dead)[0];
    assert_eq!(summary["event_id"], bad_id);
    assert!(
        summary["reason"].contains("strict_dynamic_mapping_exception"),
        "{summary:?}"
    );
    assert!(summary["reason"].contains(&strict_index), "{summary:?}");
    assert!(summary["response"].contains("\"status\":400"), "{summary:?}");
    assert_eq!(summary["attempts"], "1", "a refusal is not retried");
    assert_eq!(summary["topic"], topics.deliver);
    assert!(summary["partition"].parse::<i32>().is_ok() && summary["offset"].parse::<i64>().is_ok());
    let good: Vec<String> = event_ids(&events).into_iter().filter(|id| *id != bad_id).collect();
    indices.assert_exactly_once(&good).await;

    // The fix: drop the strict index, so the sink's template creates it again. Then replay.
    indices.delete(&strict_index).await;
    let output = replay(BIN, &env, &["--reason", "strict_dynamic_mapping"]);
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("replayed 1 of 1"),
        "{output:?}"
    );
    nectar_tests::sink::wait_until("the replayed event is indexed", Duration::from_secs(60), || async {
        indices.counts().await.contains_key(&bad_id)
    })
    .await;
    caught_up(&topics, &mut sink).await;
    indices.assert_exactly_once(&event_ids(&events)).await;
    let (where_, _) = indices.documents().await;
    assert_eq!(where_[&bad_id], [strict_index], "in its own day's index");
    assert!(sink.exited().is_none(), "{}", sink.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_credentials_stop_the_sink_at_start() {
    let indices = Indices::new().await;
    let topics = fresh_sink_topics("elasticsearch").await;
    let proxy = Proxy::start(&opensearch_url()).await;
    let good_key = "bmVjdGFyLWlkOm5lY3Rhci1zZWNyZXQ="; // base64("nectar-id:nectar-secret")
    proxy.require_auth(Some(&format!("ApiKey {good_key}")));

    let env = indices.env(
        &topics,
        proxy.url(),
        &[("NECTAR_TARGET__API_KEY", "d3JvbmctaWQ6d3Jvbmc=")],
    );
    let (status, output) = run_to_exit(BIN, &env, Duration::from_secs(60));
    assert!(!status.success(), "{output}");
    assert!(output.contains("credentials rejected"), "{output}");
    assert!(output.contains("401"), "{output}");
    let first = proxy.requests();
    assert_eq!(first.len(), 1, "one answer is enough: 401 is not retried");
    assert_eq!(first[0].path, "/");

    // The same sink with the right key passes the start check (the header is `ApiKey <key>`),
    // and so does basic authentication.
    let env = indices.env(&topics, proxy.url(), &[("NECTAR_TARGET__API_KEY", good_key)]);
    let check = std::process::Command::new(BIN)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .arg("check")
        .output()
        .expect("check");
    assert!(check.status.success(), "{check:?}");
    proxy.require_auth(Some("Basic bmVjdGFyOnMzY3JldA==")); // nectar:s3cret
    let env = indices.env(
        &topics,
        proxy.url(),
        &[
            ("NECTAR_TARGET__USERNAME", "nectar"),
            ("NECTAR_TARGET__PASSWORD", "s3cret"),
        ],
    );
    let check = std::process::Command::new(BIN)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .arg("check")
        .output()
        .expect("check");
    assert!(check.status.success(), "{check:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn credentials_revoked_while_running_stop_the_sink_uncommitted() {
    let indices = Indices::new().await;
    let topics = fresh_sink_topics("elasticsearch").await;
    let proxy = Proxy::start(&opensearch_url()).await;
    let first = sample_events(20, "before");
    produce_events(&topics.deliver, &first).await;
    let env = indices.env(&topics, proxy.url(), &[]);
    let mut sink = ServiceProcess::start(BIN, env);
    caught_up(&topics, &mut sink).await;

    proxy.require_auth(Some("ApiKey something-else"));
    produce_events(&topics.deliver, &sample_events(5, "after")).await;
    nectar_tests::sink::wait_until("the sink stops", Duration::from_secs(60), || {
        let exited = sink.exited();
        async move { exited.is_some() }
    })
    .await;
    let status = sink.exited().expect("exited");
    assert!(!status.success());
    assert!(sink.log().contains("credentials rejected"), "{}", sink.log());
    let group = topics.group.clone();
    let deliver = topics.deliver.clone();
    let committed = tokio::task::spawn_blocking(move || nectar_tests::group_caught_up(&group, &[deliver.as_str()]))
        .await
        .unwrap();
    assert!(!committed, "the refused events stay uncommitted for the next start");
    indices.assert_exactly_once(&event_ids(&first)).await;
}

/// GDPR erasure: leads A and B are indexed, then A's erasure request arrives in one batch
/// with one more event of A before it and two after it, while the first two
/// `_delete_by_query` requests fail with 503. Only B's documents, the other workspace's
/// document with A's lead key, the request (without the person) and A's events after it
/// remain. A second consumer group reading the whole topic again (every event redelivered)
/// leaves the same documents.
#[tokio::test(flavor = "multi_thread")]
async fn erasure_deletes_the_leads_earlier_documents_and_keeps_what_follows_it() {
    let indices = Indices::new().await;
    let topics = fresh_sink_topics("elasticsearch").await;
    let proxy = Proxy::start(&opensearch_url()).await;
    let lead_a = "ws-test:lead-a";
    let a_before = for_lead(sample_events(8, "a"), lead_a);
    let b = for_lead(sample_events(8, "b"), "ws-test:lead-b");
    let mut other_workspace = for_lead(sample_events(1, "other"), lead_a);
    other_workspace[0].envelope.workspace_id = "ws-other".into();
    produce_events(
        &topics.deliver,
        &[a_before.clone(), b.clone(), other_workspace.clone()].concat(),
    )
    .await;
    let mut sink = ServiceProcess::start(BIN, indices.env(&topics, proxy.url(), &[]));
    caught_up(&topics, &mut sink).await;
    assert_eq!(indices.counts().await.len(), 17);

    proxy.fail_next(2, Failure::status(503, "_delete_by_query"));
    let a_late = for_lead(sample_events(1, "a-late"), lead_a);
    let erasure = erasure_event(lead_a, "lead-a-0@example.com");
    let a_after = for_lead(sample_events(2, "post"), lead_a);
    produce_events(
        &topics.deliver,
        &[a_late.clone(), vec![erasure.clone()], a_after.clone()].concat(),
    )
    .await;
    caught_up(&topics, &mut sink).await;
    assert!(sink.terminate().success());

    let deletes: Vec<_> = proxy
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("_delete_by_query"))
        .collect();
    // The local stack's OpenSearch (integ-test-zip) has no reindex module, hence no
    // `_delete_by_query`: its "no handler" answer makes the sink search and delete by id.
    let statuses: Vec<u16> = deletes.iter().map(|r| r.status).collect();
    assert!(
        statuses == [503, 503, 200] || statuses == [503, 503, 400],
        "the failed delete is retried like any request: {statuses:?}"
    );
    if statuses[2] == 400 {
        assert!(sink.log().contains("search the lead's documents and delete them by id"));
        assert!(
            proxy
                .requests()
                .iter()
                .any(|r| r.path.contains("/_search") && r.path.starts_with(&format!("/{}-*", indices.prefix))),
            "no fallback search"
        );
    }
    assert!(
        deletes[0]
            .path
            .contains(&format!("{}-*/_delete_by_query", indices.prefix))
            && deletes[0].path.contains("conflicts=proceed")
            && deletes[0].path.contains("refresh=true"),
        "{}",
        deletes[0].path
    );
    // Every delete came after the bulk holding A's last event before the request.
    let late_id = &a_late[0].envelope.event_id;
    let first_late_bulk = proxy
        .requests()
        .iter()
        .position(|r| r.ids.contains(late_id))
        .expect("the event before the request was sent");
    let first_delete = proxy
        .requests()
        .iter()
        .position(|r| r.path.contains("_delete_by_query"))
        .unwrap();
    assert!(first_late_bulk < first_delete);

    let mut expected: Vec<String> = [event_ids(&b), event_ids(&other_workspace), event_ids(&a_after)].concat();
    expected.push(erasure.envelope.event_id.clone());
    let check = |sources: HashMap<String, Value>| {
        let mut ids: Vec<String> = sources.keys().cloned().collect();
        ids.sort();
        let mut want = expected.clone();
        want.sort();
        assert_eq!(ids, want);
        let request = &sources[&erasure.envelope.event_id];
        assert_eq!(request["envelope"]["lead_key"], lead_a);
        assert!(
            request["person"].is_null(),
            "the request keeps no personal data: {request}"
        );
        for (id, source) in &sources {
            assert!(
                !source.to_string().contains("lead-a-"),
                "{id} still holds lead A's data: {source}"
            );
        }
    };
    check(indices.sources().await);
    indices.assert_exactly_once(&expected).await;

    // Redelivery of everything, in order (a new group starts at the beginning): the same.
    let again = SinkTopics {
        group: format!("{}-again", topics.group),
        ..topics.clone()
    };
    let mut sink = ServiceProcess::start(BIN, indices.env(&again, &opensearch_url(), &[]));
    caught_up(&again, &mut sink).await;
    assert!(sink.terminate().success());
    check(indices.sources().await);
    indices.assert_exactly_once(&expected).await;
}

/// An event of the lead before its erasure request that the cluster refuses for now (an item
/// 429) holds the erasure back: the request and the lead's later events are retried with it,
/// and the delete runs only once that event is indexed, so it cannot come back after it.
#[tokio::test(flavor = "multi_thread")]
async fn erasure_waits_for_an_earlier_event_of_the_lead_that_is_retried() {
    let indices = Indices::new().await;
    let topics = fresh_sink_topics("elasticsearch").await;
    let proxy = Proxy::start(&opensearch_url()).await;
    let lead = "ws-test:lead-c";
    let before = for_lead(sample_events(2, "c"), lead);
    let erasure = erasure_event(lead, "lead-c-0@example.com");
    let after = for_lead(sample_events(1, "post"), lead);
    // One partition (one key), one batch: [c0, c1] are the first `_bulk`; c0 gets a 429.
    proxy.fail_bulk_items_once(1);
    produce_events(
        &topics.deliver,
        &[before.clone(), vec![erasure.clone()], after.clone()].concat(),
    )
    .await;
    let mut sink = ServiceProcess::start(BIN, indices.env(&topics, proxy.url(), &[]));
    caught_up(&topics, &mut sink).await;
    assert!(sink.terminate().success());

    let requests = proxy.requests();
    let first = &before[0].envelope.event_id;
    let sent_first: Vec<usize> = (0..requests.len())
        .filter(|&i| requests[i].ids.contains(first))
        .collect();
    assert!(
        sent_first.len() >= 2 && requests[sent_first[0]].rewritten.contains(first),
        "{first} was refused once and sent again: {requests:?}"
    );
    let first_erase = requests
        .iter()
        .position(|r| r.path.contains("/_refresh") || r.path.contains("_delete_by_query"))
        .expect("the erasure ran");
    assert!(
        first_erase > sent_first[1],
        "the erasure ran before the refused event was indexed: {requests:?}"
    );
    let mut expected = event_ids(&after);
    expected.push(erasure.envelope.event_id.clone());
    indices.assert_exactly_once(&expected).await;
}
