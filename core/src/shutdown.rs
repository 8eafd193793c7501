//! Graceful shutdown: SIGTERM (an orchestrator) or Ctrl-C asks a service to stop.
//!
//! Service mains call [`install`] first thing: from then on a stop request is recorded, so
//! one that arrives while the service still starts (connecting, registering schemas,
//! checking topics) is neither lost nor left to the signal's default action, which would
//! kill the process before it could stop cleanly. [`signal`] completes on a request: each
//! call takes one, and a request that came earlier completes the next call at once (ingest
//! drains on the first SIGTERM and stops at once on a second).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Once};

use tokio::sync::Notify;

static RECEIVED: AtomicU64 = AtomicU64::new(0);
static TAKEN: AtomicU64 = AtomicU64::new(0);
static ARRIVED: LazyLock<Notify> = LazyLock::new(Notify::new);
static INSTALL: Once = Once::new();

/// Start recording SIGTERM and Ctrl-C (idempotent). Needs the tokio runtime.
pub fn install() {
    INSTALL.call_once(|| {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            for kind in [SignalKind::terminate(), SignalKind::interrupt()] {
                // Registered here, synchronously: the default action is replaced from now on.
                match signal(kind) {
                    Ok(mut stream) => {
                        tokio::spawn(async move {
                            while stream.recv().await.is_some() {
                                received();
                            }
                        });
                    }
                    Err(e) => tracing::error!(error = %e, "cannot listen for a stop signal"),
                }
            }
        }
        #[cfg(not(unix))]
        tokio::spawn(async {
            while tokio::signal::ctrl_c().await.is_ok() {
                received();
            }
        });
    });
}

fn received() {
    RECEIVED.fetch_add(1, Ordering::SeqCst);
    ARRIVED.notify_waiters();
}

/// Completes when the process is asked to stop; takes that request (see the module docs).
pub async fn signal() {
    install();
    loop {
        let arrived = ARRIVED.notified();
        tokio::pin!(arrived);
        // Registered before the counters are read, so a request between the read and the
        // wait still wakes it.
        arrived.as_mut().enable();
        let taken = TAKEN.load(Ordering::SeqCst);
        if RECEIVED.load(Ordering::SeqCst) > taken {
            if TAKEN
                .compare_exchange(taken, taken + 1, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                tracing::info!("shutdown requested");
                return;
            }
            continue;
        }
        arrived.await;
    }
}
