#[tokio::main]
async fn main() -> std::process::ExitCode {
    nectar_sink::service::main::<nectar_sink_postgres::PostgresSink>().await
}
