//! Shared by the `cluster_*` tests: the binary under test, the seed of every random choice, and
//! the small waits that several tests need.
//!
//! Every random choice of a test comes from [`Seed`], printed at the start of the test; set
//! `TANDEM_TEST_SEED` to replay a failure with the same choices.

#![allow(dead_code)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tandem_client::{Event, KeyValue, Watch};

/// The `tandem` binary cargo built for these tests.
pub const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// A seeded source of random choices (splitmix64: enough for picking moments and replicas).
pub struct Seed {
    /// The seed the test started from (printed, for replay).
    pub seed: u64,
    /// Current generator state.
    state: u64,
}

impl Seed {
    /// From `TANDEM_TEST_SEED`, or from the clock; prints the replay line.
    pub fn from_env(test: &str) -> Seed {
        let seed = std::env::var("TANDEM_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{test}: seed {seed} (replay with TANDEM_TEST_SEED={seed})");
        Seed { seed, state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `low..=high`.
    pub fn between(&mut self, low: u64, high: u64) -> u64 {
        low + self.next_u64() % (high - low + 1)
    }
}

/// The wall clock in milliseconds since the epoch (what replicas stamp leases with).
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Reads events from `watch` until `count` have arrived; panics when the feed ends, fails, or
/// stalls for longer than `timeout`.
pub async fn must_next_events(watch: &mut Watch, count: usize, timeout: Duration) -> Vec<Event> {
    let mut events = Vec::new();
    while events.len() < count {
        match tokio::time::timeout(timeout, watch.next()).await {
            Ok(Some(Ok(batch))) => events.extend(batch),
            Ok(Some(Err(e))) => {
                panic!("watch failed after {} of {count} events: {e}", events.len())
            }
            Ok(None) => panic!("watch ended after {} of {count} events", events.len()),
            Err(_) => panic!("watch stalled after {} of {count} events: {events:?}", events.len()),
        }
    }
    events
}

/// Keys and values of `kvs`, for short assertion messages.
pub fn keys(kvs: &[KeyValue]) -> Vec<String> {
    kvs.iter().map(|kv| kv.key.clone()).collect()
}

/// Serialises the tests of one test binary (cargo runs them on parallel threads): two clusters
/// at once on a two-core machine would make every timer in them less predictable. Hold the
/// guard for the whole test. (A tokio mutex: it is held across awaits, and works across the
/// separate runtimes of the tests.)
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    SERIAL.lock().await
}
