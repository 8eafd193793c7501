//! `nectar-fakes`: the local fakes of Slack, HubSpot and BigQuery as one process, so the demo
//! can run those sinks end to end on a machine that cannot reach the vendors.
//!
//! Writes `<dir>/slack.env`, `<dir>/hubspot.env` and `<dir>/bigquery.env` (the
//! `NECTAR_TARGET__*` variables pointing each sink at its fake), prints `ready`, and on
//! SIGTERM or Ctrl-C prints what each fake received, then exits.

use std::path::PathBuf;

use clap::Parser;
use nectar_tests::fakes::bigquery::FakeBigQuery;
use nectar_tests::fakes::hubspot::{self, FakeHubspot};
use nectar_tests::fakes::slack::{self, FakeSlack};

#[derive(Debug, Parser)]
#[command(
    name = "nectar-fakes",
    about = "Local fakes of Slack, HubSpot and BigQuery for the demo"
)]
struct Cli {
    /// Where to write the env files.
    #[arg(long)]
    env_dir: PathBuf,
}

const TABLE: &str = "events";

fn write_env(path: PathBuf, vars: &[(String, String)]) -> std::io::Result<()> {
    let text: String = vars.iter().map(|(k, v)| format!("export {k}='{v}'\n")).collect();
    std::fs::write(path, text)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    std::fs::create_dir_all(&cli.env_dir)?;
    let slack = FakeSlack::start().await;
    let hubspot = FakeHubspot::start().await;
    let bigquery = FakeBigQuery::start().await;
    write_env(
        cli.env_dir.join("slack.env"),
        &vars(&[
            ("NECTAR_TARGET__API_URL", slack.api_url()),
            ("NECTAR_TARGET__TOKEN", slack::BOT_TOKEN.to_owned()),
            ("NECTAR_TARGET__DEFAULT_CHANNEL", slack::LEADS_CHANNEL.to_owned()),
        ]),
    )?;
    write_env(
        cli.env_dir.join("hubspot.env"),
        &vars(&[
            ("NECTAR_TARGET__API_URL", hubspot.url().to_owned()),
            ("NECTAR_TARGET__ACCESS_TOKEN", hubspot::ACCESS_TOKEN.to_owned()),
        ]),
    )?;
    let key_file = bigquery.key_file();
    write_env(cli.env_dir.join("bigquery.env"), &bigquery.target_env(TABLE, &key_file))?;
    println!(
        "ready: slack {} hubspot {} bigquery {}",
        slack.base,
        hubspot.url(),
        bigquery.base
    );

    nectar_core::shutdown::signal().await;

    println!("Slack received {} message(s):", slack.messages().len());
    for m in slack.messages() {
        let first = m.text.lines().next().unwrap_or_default();
        println!("  #{} {first}", m.channel);
    }
    println!("HubSpot holds {} contact(s):", hubspot.contacts().len());
    for (email, contact) in hubspot.contacts() {
        let props: Vec<String> = contact
            .properties
            .iter()
            .filter(|(k, _)| *k != "email")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        println!("  {email}: {}", props.join(", "));
    }
    let rows = bigquery.stored_rows(TABLE);
    println!("BigQuery table `{TABLE}` holds {} row(s):", rows.len());
    for row in rows {
        println!(
            "  {} {}",
            row.json["event_type"].as_str().unwrap_or("?"),
            row.insert_id.unwrap_or_default()
        );
    }
    Ok(())
}

fn vars(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}
