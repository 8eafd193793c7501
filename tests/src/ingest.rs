//! `nectar_ingest::serve` in this process, on free ports, as the ingest tests and the scale
//! test run it: started, waited for until ready, and stopped through its graceful shutdown
//! (what SIGTERM triggers in the binary). `TestIngest` serves only the router, for tests that
//! need the state; this runs the whole service.

use std::time::{Duration, Instant};

use nectar_ingest::ServiceConfig;

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
