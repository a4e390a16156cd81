//! The change feed across a disconnect: a watcher that reconnects with its last revision gets
//! exactly the changes it missed, in order, then live changes; one that reconnects from a
//! revision older than the kept history (`--history-limit 10`) is told `Compacted`.

mod common;

use std::time::Duration;

use tandem_client::{ClientError, Event, EventKind};
use tandem_testkit::{init_tracing, Cluster, ClusterOptions, Kind};
use tracing::info;

use common::{must_next_events, TANDEM};

/// Longest a watcher may wait for its next event when one is due.
const EVENT_DUE: Duration = Duration::from_secs(15);
/// Revisions of the change feed the replicas keep.
const HISTORY_LIMIT: u64 = 10;

/// `(revision, key, kind, value)` of events, for exact comparison.
fn summary(events: &[Event]) -> Vec<(u64, String, i32, String)> {
    events
        .iter()
        .map(|e| {
            (
                e.revision,
                e.key.clone(),
                e.kind,
                String::from_utf8_lossy(&e.value).into_owned(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watcher_resumes_after_disconnect_and_learns_when_history_is_compacted() {
    init_tracing();

    info!("--- start three sync replicas keeping {HISTORY_LIMIT} revisions of change history");
    let options = ClusterOptions::default().history_limit(HISTORY_LIMIT);
    let cluster = Cluster::must_start(TANDEM, &[Kind::Sync, Kind::Sync, Kind::Sync], options).await;
    let client = cluster.new_client();
    let start = cluster.must_put("other/before", "not watched").await;

    info!("--- a watcher of watched/ records three changes");
    let mut watch = client.watch("watched/", start).await.expect("open the watch");
    let mut expected = Vec::new();
    for i in 0..3 {
        let revision = cluster.must_put(&format!("watched/k{i}"), &format!("v{i}")).await;
        expected.push((
            revision,
            format!("watched/k{i}"),
            EventKind::Put as i32,
            format!("v{i}"),
        ));
    }
    let seen = must_next_events(&mut watch, 3, EVENT_DUE).await;
    assert_eq!(summary(&seen), expected, "live events differ");
    let last = watch.last_revision();
    assert_eq!(last, expected[2].0, "last_revision is the last event's revision");

    info!("--- the watcher disconnects; changes happen (puts, a delete, an unwatched key)");
    drop(watch);
    let mut missed = Vec::new();
    let revision = cluster.must_put("watched/k3", "v3").await;
    missed.push((
        revision,
        "watched/k3".to_owned(),
        EventKind::Put as i32,
        "v3".to_owned(),
    ));
    cluster.must_put("other/unwatched", "x").await;
    let revision = match client.delete("watched/k0").await {
        Ok(revision) => revision,
        Err(e) => panic!("delete watched/k0: {e}"),
    };
    missed.push((
        revision,
        "watched/k0".to_owned(),
        EventKind::Delete as i32,
        String::new(),
    ));
    let revision = cluster.must_put("watched/k1", "v1-again").await;
    missed.push((
        revision,
        "watched/k1".to_owned(),
        EventKind::Put as i32,
        "v1-again".to_owned(),
    ));

    info!("--- it reconnects after revision {last}: exactly the missed changes, in order");
    let mut watch = client.watch("watched/", last).await.expect("reopen the watch");
    let caught_up = must_next_events(&mut watch, missed.len(), EVENT_DUE).await;
    assert_eq!(summary(&caught_up), missed, "missed events differ");

    info!("--- then live changes follow, with nothing repeated in between");
    let revision = cluster.must_put("watched/k4", "v4").await;
    let live = must_next_events(&mut watch, 1, EVENT_DUE).await;
    assert_eq!(
        summary(&live),
        vec![(
            revision,
            "watched/k4".to_owned(),
            EventKind::Put as i32,
            "v4".to_owned()
        )]
    );
    let old = watch.last_revision();
    drop(watch);

    info!("--- 50 writes while disconnected: resuming from revision {old} is refused as compacted");
    for i in 0..50 {
        cluster.must_put(&format!("watched/bulk/{i:02}"), "x").await;
    }
    let refused = match client.watch("watched/", old).await {
        Err(e) => e,
        // The refusal may also come as the stream's first item.
        Ok(mut watch) => match tokio::time::timeout(EVENT_DUE, watch.next()).await {
            Ok(Some(Err(e))) => e,
            other => panic!("a watch from compacted revision {old} was not refused: {other:?}"),
        },
    };
    match refused {
        ClientError::Compacted { requested, oldest } => {
            assert_eq!(requested, old, "the refusal names the requested revision");
            assert!(oldest > old, "the oldest kept revision {oldest} is not after {old}");
        }
        other => panic!("expected Compacted, got {other}"),
    }

    info!("--- a watch from the current revision works");
    let current = cluster.must_put("watched/final", "y").await;
    let mut watch = client
        .watch("watched/", current)
        .await
        .expect("watch from the current revision");
    let revision = cluster.must_put("watched/after-compaction", "z").await;
    let live = must_next_events(&mut watch, 1, EVENT_DUE).await;
    assert_eq!(live[0].revision, revision);
    assert_eq!(live[0].key, "watched/after-compaction");
}
