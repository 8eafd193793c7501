//! `nectar_ingest::serve` in this process, on free ports, as the ingest tests and the scale
//! test run it: started, waited for until ready, and stopped through its graceful shutdown
//! (what SIGTERM triggers in the binary). `TestIngest` serves only the router, for tests that
//! need the state; this runs the whole service.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use nectar_ingest::ServiceConfig;
use nectar_ingest::signature::{SignatureSpec, SignedRequest};
use sha2::{Digest, Sha256};

use crate::free_addr;

#[derive(Debug)]
pub struct InProcessIngest {
    /// `http://<ingest.listen>`.
    pub base: String,
    /// `http://<admin.listen>`.
    pub admin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl InProcessIngest {
    /// Serve `config` with its listeners moved to free ports; returns once `/readyz` is 200.
    pub async fn start(mut config: ServiceConfig) -> Self {
        config.ingest.listen = free_addr();
        config.admin.listen = free_addr();
        let base = format!("http://{}", config.ingest.listen);
        let admin = format!("http://{}", config.admin.listen);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(nectar_ingest::serve(config, async move {
            let _ = stopped.await;
        }));
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !http
            .get(format!("{admin}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(!server.is_finished(), "ingest stopped at start");
            assert!(Instant::now() < deadline, "ingest did not become ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Self {
            base,
            admin,
            stop: Some(stop),
            server,
        }
    }

    /// Begin the graceful shutdown (what SIGTERM does) without waiting for it.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Begin the graceful shutdown if not begun, and wait until `serve` returns: requests in
    /// flight answered, the producer flushed. Panics if it returns an error.
    pub async fn shutdown(mut self) {
        self.begin_shutdown();
        self.server
            .await
            .expect("ingest task")
            .expect("ingest shuts down cleanly");
    }
}

/// Seconds since the epoch, now.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// Headers a vendor would send for `body`, signed with `secret` at `timestamp` (the spec's unit).
pub fn vendor_headers(vendor: &str, secret: &str, url: &str, body: &[u8], timestamp_secs: i64) -> HeaderMap {
    let spec = match vendor {
        "stripe" => SignatureSpec::stripe(),
        "shopify" => SignatureSpec::shopify(),
        "hubspot" => SignatureSpec::hubspot_v3(),
        "slack" => SignatureSpec::slack_v0(),
        _ => SignatureSpec::generic_hmac_sha256(),
    };
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse().expect("value"));
    let ts = match vendor {
        "hubspot" => timestamp_secs * 1000,
        _ => timestamp_secs,
    };
    match vendor {
        "hubspot" => {
            headers.insert("x-hubspot-request-timestamp", ts.to_string().parse().expect("value"));
        }
        "slack" => {
            headers.insert("x-slack-request-timestamp", ts.to_string().parse().expect("value"));
        }
        "stripe" | "shopify" => {}
        _ => {
            headers.insert("x-nectar-timestamp", ts.to_string().parse().expect("value"));
        }
    }
    let empty = HeaderMap::new();
    let request = SignedRequest {
        method: "POST",
        url,
        headers: &empty,
        body,
    };
    let signature = spec.sign(&request, secret.as_bytes(), spec.timestamp.as_ref().map(|_| ts));
    headers.insert(
        http::HeaderName::from_bytes(spec.header.to_ascii_lowercase().as_bytes()).expect("name"),
        signature.parse().expect("value"),
    );
    headers
}

pub const API_KEY: &str = "nk_test_4f1c2a";
pub const STRIPE_SECRET: &str = "whsec_test_secret";
pub const SHOPIFY_SECRET: &str = "shpss_test_secret";
pub const HUBSPOT_SECRET: &str = "hubspot-client-secret";
pub const SLACK_SECRET: &str = "8f742231b10e8888abcd99yyyzzz85a5";
pub const GENERIC_SECRET: &str = "generic-secret";

/// The ingest test configuration: two forms, a producer API key, a source per built-in vendor.
pub fn extra_config() -> String {
    extra_config_with("")
}

/// The test configuration, with `forms_settings` added to the `[ingest.forms]` table.
pub fn extra_config_with(forms_settings: &str) -> String {
    let key_hash = hex::encode(Sha256::digest(API_KEY.as_bytes()));
    format!(
        r#"
        [ingest.forms]
        allowed_origins = ["https://www.example.com"]
        {forms_settings}
        [ingest.forms.definitions.contact]
        workspace_id = "acme"
        form_type = "contact"
        required_fields = ["email"]
        [ingest.forms.definitions.newsletter]
        form_type = "newsletter"

        [[ingest.events.api_keys]]
        name = "crm-app"
        workspace_id = "acme"
        sha256 = "{key_hash}"

        [ingest.webhooks.sources.stripe]
        secrets = ["whsec_old_rotated_out", "{STRIPE_SECRET}"]
        workspace_id = "acme"
        [ingest.webhooks.sources.shopify]
        secrets = ["{SHOPIFY_SECRET}"]
        [ingest.webhooks.sources.hubspot]
        secrets = ["{HUBSPOT_SECRET}"]
        [ingest.webhooks.sources.slack]
        secrets = ["{SLACK_SECRET}"]
        [ingest.webhooks.sources.billing]
        vendor = "generic"
        secrets = ["{GENERIC_SECRET}"]
        "#
    )
}
