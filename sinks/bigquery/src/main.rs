#[tokio::main]
async fn main() -> std::process::ExitCode {
    nectar_sink::service::main::<nectar_sink_bigquery::BigQuerySink>().await
}
