//! `nectar-sink-hubspot`: see the crate's README.

#[tokio::main]
async fn main() -> std::process::ExitCode {
    nectar_sink::service::main::<nectar_sink_hubspot::HubspotSink>().await
}
