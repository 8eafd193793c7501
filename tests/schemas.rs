//! The `.avsc` files are the contract: every committed version of a schema must be readable
//! by the current one (BACKWARD compatibility), so consumers can upgrade after producers.
//!
//! Checked twice: with apache-avro's schema resolution rules against every version in the git
//! history, and by the real registry, which is asked to enforce BACKWARD_TRANSITIVE while every
//! historical version and then the working-tree version are registered in order.

use std::process::Command;

use apache_avro::Schema;
use apache_avro::schema_compatibility::SchemaCompatibility;
use nectar_core::schema::{self, ALL, ENVELOPE_AVSC, resolve};
use nectar_tests::{registry_config, repo_root, unique};
use serde_json::{Value, json};

/// The text of `path` at every commit that changed it, oldest first (empty outside a git
/// checkout, where only the working tree can be checked).
fn history(path: &str) -> Vec<(String, String)> {
    let root = repo_root();
    let Ok(log) = Command::new("git")
        .current_dir(&root)
        .args(["log", "--reverse", "--format=%H", "--", path])
        .output()
    else {
        return Vec::new();
    };
    String::from_utf8_lossy(&log.stdout)
        .lines()
        .filter_map(|commit| {
            let show = Command::new("git")
                .current_dir(&root)
                .args(["show", &format!("{commit}:{path}")])
                .output()
                .ok()?;
            show.status
                .success()
                .then(|| (commit.to_owned(), String::from_utf8_lossy(&show.stdout).into_owned()))
        })
        .collect()
}

/// The envelope as it was at `commit` (or the current one if it did not exist yet).
fn envelope_at(commit: &str) -> String {
    Command::new("git")
        .current_dir(repo_root())
        .args(["show", &format!("{commit}:schemas/avro/envelope.avsc")])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || ENVELOPE_AVSC.to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).into_owned(),
        )
}

/// Every historical version of `file` with the envelope of its time inlined.
fn versions(file: &str) -> Vec<(String, Value)> {
    history(&format!("schemas/avro/{file}"))
        .into_iter()
        .map(|(commit, text)| {
            let resolved = resolve(&text, &envelope_at(&commit)).unwrap_or_else(|e| panic!("{file}@{commit}: {e}"));
            (commit, resolved)
        })
        .collect()
}

#[test]
fn every_schema_reads_every_committed_version_of_itself() {
    for event in ALL {
        let current = event.schema();
        let versions = versions(event.file);
        for (commit, old) in &versions {
            let old = Schema::parse(old).unwrap_or_else(|e| panic!("{}@{commit}: {e}", event.file));
            SchemaCompatibility::can_read(&old, &current).unwrap_or_else(|e| {
                panic!(
                    "{} is not backward compatible with its version at {commit}: {e}",
                    event.file
                )
            });
        }
        eprintln!(
            "{}: compatible with {} committed version(s)",
            event.file,
            versions.len()
        );
    }
}

#[test]
fn the_check_catches_a_breaking_change() {
    // A new field without a default cannot be filled in when reading old data.
    let mut broken = schema::FORM_SUBMITTED.resolved_json();
    broken["fields"]
        .as_array_mut()
        .expect("fields")
        .push(json!({"name": "campaign", "type": "string"}));
    let broken = Schema::parse(&broken).expect("valid schema");
    assert!(SchemaCompatibility::can_read(&schema::FORM_SUBMITTED.schema(), &broken).is_err());
    // With a default it is fine.
    let mut fine = schema::FORM_SUBMITTED.resolved_json();
    fine["fields"]
        .as_array_mut()
        .expect("fields")
        .push(json!({"name": "campaign", "type": ["null", "string"], "default": null}));
    let fine = Schema::parse(&fine).expect("valid schema");
    assert!(SchemaCompatibility::can_read(&schema::FORM_SUBMITTED.schema(), &fine).is_ok());
}

async fn post(client: &reqwest::Client, url: String, body: Value) -> (reqwest::StatusCode, Value) {
    let response = client
        .post(url)
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .body(body.to_string())
        .send()
        .await
        .expect("the registry is up (deploy/local/stack up)");
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn the_registry_accepts_the_history_in_order_under_backward_transitive() {
    let base = registry_config().url;
    let client = reqwest::Client::new();
    for event in ALL {
        let subject = unique(&format!("compat-{}", event.file.trim_end_matches(".avsc")));
        let response = client
            .put(format!("{base}/config/{subject}"))
            .header("Content-Type", "application/vnd.schemaregistry.v1+json")
            .body(json!({"compatibility": "BACKWARD_TRANSITIVE"}).to_string())
            .send()
            .await
            .expect("registry");
        assert!(
            response.status().is_success(),
            "setting compatibility: {}",
            response.status()
        );
        let mut all: Vec<Value> = versions(event.file).into_iter().map(|(_, v)| v).collect();
        all.push(event.resolved_json());
        for (i, version) in all.iter().enumerate() {
            let (status, body) = post(
                &client,
                format!("{base}/subjects/{subject}/versions"),
                json!({"schema": version.to_string()}),
            )
            .await;
            assert!(
                status.is_success(),
                "{} version {i} refused by the registry: {status} {body}",
                event.file
            );
        }
    }
}

#[tokio::test]
async fn the_registry_refuses_a_breaking_change() {
    let base = registry_config().url;
    let client = reqwest::Client::new();
    let subject = unique("compat-breaking");
    client
        .put(format!("{base}/config/{subject}"))
        .header("Content-Type", "application/vnd.schemaregistry.v1+json")
        .body(json!({"compatibility": "BACKWARD"}).to_string())
        .send()
        .await
        .expect("registry");
    let current = schema::APP_EVENT.resolved_json();
    let (status, _) = post(
        &client,
        format!("{base}/subjects/{subject}/versions"),
        json!({"schema": current.to_string()}),
    )
    .await;
    assert!(status.is_success());
    let mut broken = current;
    broken["fields"]
        .as_array_mut()
        .expect("fields")
        .push(json!({"name": "required_now", "type": "string"}));
    let (status, body) = post(
        &client,
        format!("{base}/subjects/{subject}/versions"),
        json!({"schema": broken.to_string()}),
    )
    .await;
    assert_eq!(status, reqwest::StatusCode::CONFLICT, "{body}");
}
