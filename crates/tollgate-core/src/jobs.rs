//! Periodic background jobs (retention, purges, re-checks): one loop, written once.

use std::future::Future;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Runs `run` at once and then every `every` until `stop` is cancelled. A failed run is logged
/// (as `what`) and tried again at the next tick; a late tick does not bunch up runs.
pub fn every<F, Fut, E>(what: &'static str, every: Duration, stop: CancellationToken, mut run: F) -> JoinHandle<()>
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), E>> + Send,
    E: std::fmt::Display,
{
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = ticks.tick() => {}
            }
            if let Err(error) = run().await {
                tracing::error!(job = what, error = %error, "background job failed; retrying at the next run");
            }
        }
    })
}
