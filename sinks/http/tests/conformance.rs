//! The conformance suite (`nectar_tests::conformance`) for every built-in vendor spec, each
//! against its fake (`nectar_tests::fakes::<vendor>`, written from the vendor's documentation
//! and independent of the spec), with the real local Kafka and registry
//! (`deploy/local/stack up`).
//!
//! Not every behaviour applies to every vendor: Teams' Workflows trigger answers 202 before the
//! flow runs, so a card the flow cannot post is never refused in an answer the sink could
//! read; per-event vendors have no partial batch.

use std::sync::Arc;

use nectar_tests::conformance;
use nectar_tests::conformance::Vendor;
use nectar_tests::fakes;

async fn discord_vendor() -> Vendor {
    let fake = fakes::discord::FakeDiscord::start().await;
    let url = fake.webhook_url();
    let wrong = format!(
        "{}/api/webhooks/{}/not-the-token",
        fake.base_url(),
        fakes::discord::WEBHOOK_ID
    );
    Vendor {
        name: "discord",
        settings: vec![("webhook_url", url)],
        bad_credentials: vec![("webhook_url", wrong)],
        fake: Arc::new(fake),
        idempotent: false,
        batch: 1,
        retry_signal: true,
        partial_takes_none: false,
    }
}

async fn teams_vendor() -> Vendor {
    let fake = fakes::teams::FakeTeams::start().await;
    let url = fake.webhook_url();
    let wrong = url.replace(fakes::teams::SIG, "not-the-signature");
    Vendor {
        name: "teams",
        settings: vec![("webhook_url", url)],
        bad_credentials: vec![("webhook_url", wrong)],
        fake: Arc::new(fake),
        idempotent: false,
        batch: 1,
        retry_signal: true,
        partial_takes_none: false,
    }
}

async fn telegram_vendor() -> Vendor {
    let fake = fakes::telegram::FakeTelegram::start().await;
    Vendor {
        name: "telegram",
        settings: vec![
            ("api_url", fake.api_url().to_owned()),
            ("bot_token", fakes::telegram::BOT_TOKEN.to_owned()),
            ("chat_id", fakes::telegram::PRIVATE_CHAT.to_string()),
        ],
        bad_credentials: vec![("bot_token", "7000000001:AAFakeNectarBotToken0123456789WRONG".to_owned())],
        fake: Arc::new(fake),
        idempotent: false,
        batch: 1,
        retry_signal: true,
        partial_takes_none: false,
    }
}

async fn webhook_vendor() -> Vendor {
    let fake = fakes::webhook::FakeWebhookReceiver::start().await;
    Vendor {
        name: "webhook",
        settings: vec![
            ("url", fake.webhook_url()),
            ("secret", fakes::webhook::SECRET.to_owned()),
        ],
        bad_credentials: vec![("secret", "whsec_bm90LXRoZS1zZWNyZXQtYXQtYWxsLXJlYWxseQ==".to_owned())],
        fake: Arc::new(fake),
        idempotent: true,
        batch: 1,
        retry_signal: true,
        partial_takes_none: false,
    }
}

conformance!(
    discord,
    discord_vendor(),
    bad_event_is_dead_lettered_with_the_vendors_answer
);
conformance!(teams, teams_vendor());
conformance!(
    telegram,
    telegram_vendor(),
    bad_event_is_dead_lettered_with_the_vendors_answer
);
conformance!(
    webhook,
    webhook_vendor(),
    bad_event_is_dead_lettered_with_the_vendors_answer
);

async fn mixpanel_vendor() -> Vendor {
    let fake = fakes::mixpanel::FakeMixpanel::start().await;
    Vendor {
        name: "mixpanel",
        settings: vec![
            ("api_url", fake.base_url().to_owned()),
            ("project_id", fakes::mixpanel::PROJECT_ID.to_owned()),
            ("service_account_username", fakes::mixpanel::SERVICE_ACCOUNT.to_owned()),
            ("service_account_secret", fakes::mixpanel::SERVICE_SECRET.to_owned()),
        ],
        bad_credentials: vec![("service_account_secret", "not-the-secret".to_owned())],
        fake: Arc::new(fake),
        idempotent: true,
        batch: 2000,
        retry_signal: false,
        partial_takes_none: false,
    }
}

async fn amplitude_vendor() -> Vendor {
    let fake = fakes::amplitude::FakeAmplitude::start().await;
    Vendor {
        name: "amplitude",
        settings: vec![
            ("api_url", fake.base_url().to_owned()),
            ("api_key", fakes::amplitude::API_KEY.to_owned()),
        ],
        bad_credentials: vec![("api_key", "00000000000000000000000000000000".to_owned())],
        fake: Arc::new(fake),
        idempotent: true,
        batch: 2000,
        retry_signal: false,
        partial_takes_none: true,
    }
}

conformance!(
    mixpanel,
    mixpanel_vendor(),
    bad_event_is_dead_lettered_with_the_vendors_answer,
    partial_failure_retries_only_the_failed
);
conformance!(
    amplitude,
    amplitude_vendor(),
    bad_event_is_dead_lettered_with_the_vendors_answer,
    partial_failure_retries_only_the_failed
);
