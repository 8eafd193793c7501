//! `nectar-fakes`: the local fakes of Slack, HubSpot, BigQuery, Discord, Teams and a signed
//! (Standard Webhooks) receiver as one process, so the demo can run those sinks end to end on a
//! machine that cannot reach the vendors.
//!
//! Writes `<dir>/slack.env`, `<dir>/hubspot.env`, `<dir>/bigquery.env`, `<dir>/discord.env`,
//! `<dir>/teams.env` and `<dir>/webhook.env` (the `NECTAR_TARGET__*` variables pointing each sink
//! at its fake), prints `ready`, and on SIGTERM or Ctrl-C prints what each fake received, then
//! exits.

use std::path::PathBuf;

use clap::Parser;
use nectar_tests::fakes::bigquery::FakeBigQuery;
use nectar_tests::fakes::discord::FakeDiscord;
use nectar_tests::fakes::harness::VendorFake;
use nectar_tests::fakes::hubspot::{self, FakeHubspot};
use nectar_tests::fakes::slack::{self, FakeSlack};
use nectar_tests::fakes::teams::FakeTeams;
use nectar_tests::fakes::webhook::{self, FakeWebhookReceiver};

#[derive(Debug, Parser)]
#[command(
    name = "nectar-fakes",
    about = "Local fakes of Slack, HubSpot, BigQuery, Discord, Teams and a signed webhook receiver for the demo"
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
    let discord = FakeDiscord::start().await;
    let teams = FakeTeams::start().await;
    let receiver = FakeWebhookReceiver::start().await;
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
    write_env(
        cli.env_dir.join("discord.env"),
        &vars(&[
            ("NECTAR_TARGET__VENDOR", "discord".to_owned()),
            ("NECTAR_TARGET__WEBHOOK_URL", discord.webhook_url()),
        ]),
    )?;
    write_env(
        cli.env_dir.join("teams.env"),
        &vars(&[
            ("NECTAR_TARGET__VENDOR", "teams".to_owned()),
            ("NECTAR_TARGET__WEBHOOK_URL", teams.webhook_url()),
        ]),
    )?;
    write_env(
        cli.env_dir.join("webhook.env"),
        &vars(&[
            ("NECTAR_TARGET__VENDOR", "webhook".to_owned()),
            ("NECTAR_TARGET__URL", receiver.webhook_url()),
            ("NECTAR_TARGET__SECRET", webhook::SECRET.to_owned()),
        ]),
    )?;
    println!(
        "ready: slack {} hubspot {} bigquery {} discord {} teams {} webhook {}",
        slack.base,
        hubspot.url(),
        bigquery.base,
        discord.base_url(),
        teams.base_url(),
        receiver.base_url()
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
    println!("Discord received {} message(s):", discord.stored().len());
    for m in discord.stored() {
        let first = m["content"]
            .as_str()
            .unwrap_or_default()
            .lines()
            .next()
            .unwrap_or_default();
        let title = m["embeds"][0]["title"].as_str().unwrap_or_default();
        println!("  {}", if first.is_empty() { title } else { first });
    }
    println!("Teams received {} card(s):", teams.stored().len());
    for card in teams.stored() {
        println!("  {}", card["body"][0]["text"].as_str().unwrap_or("(no text)"));
    }
    for (card, reason) in teams.failed_runs() {
        println!(
            "  failed run ({reason}): {}",
            card["contentType"].as_str().unwrap_or("?")
        );
    }
    let deliveries = receiver.deliveries();
    println!(
        "The webhook receiver verified {} delivery(ies), {} distinct webhook id(s):",
        deliveries.len(),
        receiver.stored().len()
    );
    for d in deliveries {
        println!("  {} {}", d.id, d.json["type"].as_str().unwrap_or_default());
    }
    Ok(())
}

fn vars(pairs: &[(&str, String)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
}
