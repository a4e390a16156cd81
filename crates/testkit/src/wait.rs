//! The one polling loop every wait of the harness goes through: probe a condition, pause briefly,
//! probe again, until it holds or the deadline passes. A timeout reports what the last probe saw,
//! so a failing test says *why* it waited in vain.

use std::future::Future;
use std::time::{Duration, Instant};

use crate::TestkitError;

/// Pause between two probes. Short: a wait should end soon after its event.
pub const POLL_PAUSE: Duration = Duration::from_millis(50);

/// Probes until `probe` returns `Ok`, or fails with [`TestkitError::Timeout`] after `timeout`.
///
/// `probe` returns `Err(observation)` while the condition does not hold; the last observation
/// goes into the timeout error. A probe that itself hangs is cut off at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T, TestkitError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let started = Instant::now();
    let deadline = started + timeout;
    let mut last = String::from("no probe finished");
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(remaining, probe()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(observation)) => last = observation,
            Err(_) => last = format!("the last probe did not finish (previously: {last})"),
        }
        if Instant::now() >= deadline {
            return Err(TestkitError::Timeout {
                what: what.to_owned(),
                waited_ms: started.elapsed().as_millis() as u64,
                last,
            });
        }
        tokio::time::sleep(POLL_PAUSE.min(deadline.saturating_duration_since(Instant::now()))).await;
    }
}

/// [`eventually`], panicking with the timeout's text.
pub async fn must_eventually<T, F, Fut>(what: &str, timeout: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    match eventually(what, timeout, probe).await {
        Ok(value) => value,
        Err(e) => panic!("{e}"),
    }
}
