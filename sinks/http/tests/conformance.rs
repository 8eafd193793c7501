//! The conformance suite (`nectar_tests::conformance`) for every built-in vendor spec, each
//! against its fake (`nectar_tests::fakes::<vendor>`, written from the vendor's documentation
//! and independent of the spec), with the real local Kafka and registry
//! (`deploy/local/stack up`).
//!
//! Not every behaviour applies to every vendor: Teams' Workflows trigger answers 202 before the
//! flow runs, so a card the flow cannot post is never refused in an answer the sink could
//! read; per-event vendors have no partial batch.

use nectar_tests::conformance;
use nectar_tests::conformance::Vendor;
use nectar_tests::fakes;

/// The event's e-mail address: the key of vendors that store people by it.
fn by_email(event: &nectar_core::events::Event) -> String {
    event.person.as_ref().and_then(|p| p.email.clone()).unwrap_or_default()
}

async fn discord_vendor() -> Vendor {
    let fake = fakes::discord::FakeDiscord::start().await;
    let wrong = format!(
        "{}/api/webhooks/{}/not-the-token",
        fake.base_url(),
        fakes::discord::WEBHOOK_ID
    );
    Vendor {
        settings: vec![("webhook_url", fake.webhook_url())],
        bad_credentials: vec![("webhook_url", wrong)],
        ..Vendor::new("discord", fake)
    }
}

async fn teams_vendor() -> Vendor {
    let fake = fakes::teams::FakeTeams::start().await;
    let url = fake.webhook_url();
    Vendor {
        bad_credentials: vec![("webhook_url", url.replace(fakes::teams::SIG, "not-the-signature"))],
        settings: vec![("webhook_url", url)],
        ..Vendor::new("teams", fake)
    }
}

async fn telegram_vendor() -> Vendor {
    let fake = fakes::telegram::FakeTelegram::start().await;
    Vendor {
        settings: vec![
            ("api_url", fake.api_url().to_owned()),
            ("bot_token", fakes::telegram::BOT_TOKEN.to_owned()),
            ("chat_id", fakes::telegram::PRIVATE_CHAT.to_string()),
        ],
        bad_credentials: vec![("bot_token", "7000000001:AAFakeNectarBotToken0123456789WRONG".to_owned())],
        ..Vendor::new("telegram", fake)
    }
}

async fn webhook_vendor() -> Vendor {
    let fake = fakes::webhook::FakeWebhookReceiver::start().await;
    Vendor {
        settings: vec![
            ("url", fake.webhook_url()),
            ("secret", fakes::webhook::SECRET.to_owned()),
        ],
        bad_credentials: vec![("secret", "whsec_bm90LXRoZS1zZWNyZXQtYXQtYWxsLXJlYWxseQ==".to_owned())],
        idempotent: true,
        ..Vendor::new("webhook", fake)
    }
}

conformance!(
    discord,
    discord_vendor(),
    bad_event_is_dead_lettered_with_the_vendors_answer,
    bad_credentials_stop_the_sink
);
conformance!(teams, teams_vendor(), bad_credentials_stop_the_sink);
conformance!(
    telegram,
    telegram_vendor(),
    bad_event_is_dead_lettered_with_the_vendors_answer,
    bad_credentials_stop_the_sink
);
conformance!(
    webhook,
    webhook_vendor(),
    bad_event_is_dead_lettered_with_the_vendors_answer,
    bad_credentials_stop_the_sink
);

async fn mixpanel_vendor() -> Vendor {
    let fake = fakes::mixpanel::FakeMixpanel::start().await;
    Vendor {
        settings: vec![
            ("api_url", fake.base_url().to_owned()),
            ("project_id", fakes::mixpanel::PROJECT_ID.to_owned()),
            ("service_account_username", fakes::mixpanel::SERVICE_ACCOUNT.to_owned()),
            ("service_account_secret", fakes::mixpanel::SERVICE_SECRET.to_owned()),
        ],
        bad_credentials: vec![("service_account_secret", "not-the-secret".to_owned())],
        idempotent: true,
        batch: 2000,
        retry_signal: false,
        ..Vendor::new("mixpanel", fake)
    }
}

async fn amplitude_vendor() -> Vendor {
    let fake = fakes::amplitude::FakeAmplitude::start().await;
    Vendor {
        settings: vec![
            ("api_url", fake.base_url().to_owned()),
            ("api_key", fakes::amplitude::API_KEY.to_owned()),
        ],
        bad_credentials: vec![("api_key", "0".repeat(32))],
        idempotent: true,
        batch: 2000,
        retry_signal: false,
        partial_takes_none: true,
        ..Vendor::new("amplitude", fake)
    }
}

conformance!(
    mixpanel,
    mixpanel_vendor(),
    bad_event_is_dead_lettered_with_the_vendors_answer,
    partial_failure_retries_only_the_failed,
    bad_credentials_stop_the_sink
);
conformance!(
    amplitude,
    amplitude_vendor(),
    bad_event_is_dead_lettered_with_the_vendors_answer,
    partial_failure_retries_only_the_failed,
    bad_credentials_stop_the_sink
);

async fn mailchimp_vendor() -> Vendor {
    let fake = fakes::mailchimp::FakeMailchimp::start().await;
    Vendor {
        settings: vec![
            ("api_url", fake.api_url()),
            ("api_key", fakes::mailchimp::API_KEY.to_owned()),
            ("list_id", fakes::mailchimp::LIST_ID.to_owned()),
        ],
        bad_credentials: vec![("api_key", "00000000000000000000000000000000-us21".to_owned())],
        idempotent: true,
        retry_signal: false,
        // A member is an e-mail address (and the fake keys it by its hash).
        key: by_email,
        ..Vendor::new("mailchimp", fake)
    }
}

async fn kit_vendor() -> Vendor {
    let fake = fakes::kit::FakeKit::start().await;
    Vendor {
        settings: vec![
            ("api_url", fake.base_url().to_owned()),
            ("api_key", fakes::kit::API_KEY.to_owned()),
            ("tag_id", fakes::kit::TAG_ID.to_string()),
        ],
        bad_credentials: vec![("api_key", "kit_00000000000000000000000000000000".to_owned())],
        idempotent: true,
        retry_signal: false,
        ..Vendor::new("kit", fake)
    }
}

async fn sendgrid_vendor() -> Vendor {
    let fake = fakes::sendgrid::FakeSendgrid::start().await;
    Vendor {
        settings: vec![
            ("api_url", fake.base_url().to_owned()),
            ("api_key", fakes::sendgrid::API_KEY.to_owned()),
            ("from_email", "leads@nectar.example".to_owned()),
            ("template_id", "d-0123456789abcdef0123456789abcdef".to_owned()),
            // Every type the sample events have.
            (
                "event_types",
                "form.submitted,lead.captured,payment.succeeded,email.clicked".to_owned(),
            ),
        ],
        bad_credentials: vec![("api_key", "SG.not.the-key".to_owned())],
        // Its reset header is in whole seconds: not precise enough for the 2 s check.
        retry_signal: false,
        ..Vendor::new("sendgrid", fake)
    }
}

async fn ga4_vendor() -> Vendor {
    let fake = fakes::ga4::FakeGa4::start().await;
    Vendor {
        settings: vec![
            ("api_url", fake.base_url().to_owned()),
            ("measurement_id", fakes::ga4::MEASUREMENT_ID.to_owned()),
            ("api_secret", fakes::ga4::API_SECRET.to_owned()),
        ],
        // GA4 accepts wrong credentials silently (204): there is nothing to stop on.
        retry_signal: false,
        ..Vendor::new("ga4", fake)
    }
}

async fn salesforce_vendor() -> Vendor {
    let (fake, key) = fakes::salesforce::FakeSalesforce::start_with_new_key().await;
    Vendor {
        settings: vec![
            ("login_url", fake.login_url().to_owned()),
            ("instance_url", fake.login_url().to_owned()),
            ("consumer_key", fakes::salesforce::CONSUMER_KEY.to_owned()),
            ("username", fakes::salesforce::USERNAME.to_owned()),
            ("private_key", key.private_pem),
        ],
        bad_credentials: vec![("private_key", fakes::bigquery::TestKey::generate().private_pem)],
        idempotent: true,
        batch: 200,
        retry_signal: false,
        ..Vendor::new("salesforce", fake)
    }
}

conformance!(
    mailchimp,
    mailchimp_vendor(),
    bad_event_is_dead_lettered_with_the_vendors_answer,
    bad_credentials_stop_the_sink
);
conformance!(
    kit,
    kit_vendor(),
    bad_event_is_dead_lettered_with_the_vendors_answer,
    bad_credentials_stop_the_sink
);
conformance!(
    sendgrid,
    sendgrid_vendor(),
    bad_event_is_dead_lettered_with_the_vendors_answer,
    bad_credentials_stop_the_sink
);
conformance!(ga4, ga4_vendor());
conformance!(
    salesforce,
    salesforce_vendor(),
    bad_event_is_dead_lettered_with_the_vendors_answer,
    bad_credentials_stop_the_sink,
    partial_failure_retries_only_the_failed
);

/// Salesforce refuses a request that names one external id twice: several events of one lead
/// in a batch go out in successive requests, and the lead is upserted, not refused.
#[tokio::test(flavor = "multi_thread")]
async fn salesforce_events_of_one_lead_in_one_batch_upsert_one_lead() {
    use nectar_tests::sink::{for_lead, fresh_sink_topics, produce_events, sample_events, sink_env, wait_until};
    let vendor = salesforce_vendor().await;
    let topics = fresh_sink_topics("salesforce").await;
    let lead = nectar_tests::unique("ws-test:one-lead");
    let events = for_lead(sample_events(5, "one-lead"), &lead);
    produce_events(&topics.deliver, &events).await;
    let mut env: Vec<(String, String)> = vendor
        .settings
        .iter()
        .map(|(k, v)| (format!("NECTAR_TARGET__{}", k.to_uppercase()), v.clone()))
        .collect();
    env.push(("NECTAR_TARGET__VENDOR".into(), "salesforce".into()));
    env.extend(sink_env(&topics, &[("NECTAR_SINK__RATE_LIMIT_PER_SECOND", "0")]));
    let mut sink = nectar_tests::ServiceProcess::start(nectar_tests::service_binary("nectar-sink-http"), env);
    let last = events[4].envelope.event_id.clone();
    wait_until(
        "the lead's last event upserted",
        std::time::Duration::from_secs(60),
        || async { vendor.copies(&last) == 1 },
    )
    .await;
    sink.terminate();
    let records: Vec<_> = vendor
        .fake
        .stored()
        .into_iter()
        .filter(|r| r["Nectar_Id__c"] == lead.as_str())
        .collect();
    assert_eq!(records.len(), 1, "one Lead for the lead key");
    let refused = vendor
        .fake
        .script()
        .writes()
        .iter()
        .filter(|w| String::from_utf8_lossy(&w.answer).contains("DUPLICATE_VALUE"))
        .count();
    assert_eq!(refused, 0, "no request named the external id twice");
    assert_eq!(nectar_tests::count_records(&topics.dlq).await, 0);
}

/// The twelfth vendor, from `examples/` through `specs_dir`: a spec and a fake, no code.
async fn pipedrive_vendor() -> Vendor {
    let fake = fakes::pipedrive::FakePipedrive::start().await;
    Vendor {
        settings: vec![
            ("specs_dir", concat!(env!("CARGO_MANIFEST_DIR"), "/examples").to_owned()),
            ("api_url", fake.base_url().to_owned()),
            ("api_token", fakes::pipedrive::API_TOKEN.to_owned()),
        ],
        bad_credentials: vec![("api_token", "0".repeat(40))],
        // Found by e-mail: the person's `emails`.
        key: by_email,
        ..Vendor::new("pipedrive", fake)
    }
}

conformance!(
    pipedrive,
    pipedrive_vendor(),
    bad_event_is_dead_lettered_with_the_vendors_answer,
    bad_credentials_stop_the_sink
);
