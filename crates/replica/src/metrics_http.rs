//! Prometheus metrics over HTTP (`GET /metrics`), served on `--metrics-listen` when given.
//!
//! Every scrape takes a fresh status of the replica (the same figures `tandem db status` shows)
//! and encodes it with the prometheus-client crate, so the figures can never drift from status.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::admin_service::status;
use crate::node::Core;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    replica: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RoleLabels {
    role: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FileLabels {
    /// `log` (`log.db`) or `state` (`state.db`).
    file: String,
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let g: Gauge = Gauge::default();
    g.set(value as i64);
    registry.register(name, help, g);
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

/// The metrics text of this replica now.
pub async fn render(core: &Core) -> Result<String, String> {
    let s = status(core).await.map_err(|e| e.message().to_owned())?;
    let mut registry = Registry::with_prefix("tandem_db");
    let role: Family<RoleLabels, Gauge> = Family::default();
    role.get_or_create(&RoleLabels { role: s.role.clone() }).set(1);
    registry.register("role", "This replica's role (1 for the current one)", role);
    gauge(&mut registry, "term", "Raft term", s.term);
    gauge(&mut registry, "epoch", "Replica-set epoch", s.epoch);
    gauge(
        &mut registry,
        "fenced_by_epoch",
        "Newer epoch fencing this replica (0 = not fenced)",
        s.fenced_by_epoch,
    );
    gauge(
        &mut registry,
        "own_lag_entries",
        "Entries this replica lacks, from what the primary last said",
        s.own_lag_entries,
    );
    gauge(
        &mut registry,
        "own_lag_ms",
        "How long this replica has not held everything the primary had",
        s.own_lag_ms,
    );
    gauge(&mut registry, "last_log_index", "Last log index", s.last_log_index);
    gauge(
        &mut registry,
        "commit_index",
        "Highest commit index known",
        s.commit_index,
    );
    gauge(&mut registry, "applied_index", "Last applied index", s.applied_index);
    gauge(
        &mut registry,
        "purged_index",
        "Log compacted up to this index",
        s.purged_index,
    );
    gauge(&mut registry, "revision", "Store revision", s.revision);
    let demotions: Counter = Counter::default();
    demotions.inc_by(s.demotions);
    registry.register(
        "sync_demotions",
        "Sync replicas demoted to async by this primary",
        demotions,
    );
    counter(
        &mut registry,
        "log_writes",
        "Log write transactions (one fsync each) since the replica started or changed epoch",
        s.log_writes,
    );
    counter(
        &mut registry,
        "log_entries_written",
        "Log entries those writes held",
        s.log_entries_written,
    );
    counter(
        &mut registry,
        "txns_proposed",
        "Client transactions this replica proposed as primary",
        s.txns_proposed,
    );
    counter(
        &mut registry,
        "txn_entries_proposed",
        "Log entries that carried them (group commit)",
        s.txn_entries_proposed,
    );
    counter(
        &mut registry,
        "early_appends_sent",
        "AppendEntries sent as primary while still syncing the entries to its own log",
        s.early_appends_sent,
    );
    counter(
        &mut registry,
        "early_appends_accepted",
        "Those a follower accepted",
        s.early_appends_accepted,
    );
    counter(
        &mut registry,
        "early_appends_answered",
        "openraft AppendEntries answered from followers' answers to early messages instead of being sent",
        s.early_appends_answered,
    );
    counter(
        &mut registry,
        "campaigns",
        "Campaigns for primary started after a majority granted the pre-vote",
        s.campaigns,
    );
    counter(
        &mut registry,
        "pre_votes_refused",
        "Pre-votes a majority refused (no campaign, no term raised)",
        s.pre_votes_refused,
    );
    let checkpoints: Family<FileLabels, Counter> = Family::default();
    let rewinds: Family<FileLabels, Counter> = Family::default();
    let rewinds_busy: Family<FileLabels, Counter> = Family::default();
    let checkpoint_failures: Family<FileLabels, Counter> = Family::default();
    let wal_frames: Family<FileLabels, Gauge> = Family::default();
    for (file, counts) in [("log", &s.log_checkpoints), ("state", &s.state_checkpoints)] {
        let Some(counts) = counts else { continue };
        let labels = FileLabels { file: file.to_owned() };
        checkpoints.get_or_create(&labels).inc_by(counts.checkpoints);
        rewinds.get_or_create(&labels).inc_by(counts.rewinds);
        rewinds_busy.get_or_create(&labels).inc_by(counts.rewinds_busy);
        checkpoint_failures.get_or_create(&labels).inc_by(counts.failures);
        wal_frames.get_or_create(&labels).set(counts.wal_frames as i64);
    }
    registry.register(
        "checkpoints",
        "Passive checkpoints of a database file (its write-ahead log copied into it)",
        checkpoints,
    );
    registry.register("wal_rewinds", "Rewinds of a database file's write-ahead log", rewinds);
    registry.register(
        "wal_rewinds_busy",
        "Rewinds given up because the writer or a reader kept the write-ahead log (tried again later)",
        rewinds_busy,
    );
    registry.register(
        "checkpoint_failures",
        "Checkpoints that failed (tried again after the next write)",
        checkpoint_failures,
    );
    registry.register(
        "wal_frames",
        "Pages in a database file's write-ahead log after its latest checkpoint",
        wal_frames,
    );
    let lag_entries: Family<ReplicaLabels, Gauge> = Family::default();
    let lag_ms: Family<ReplicaLabels, Gauge> = Family::default();
    let demoted: Family<ReplicaLabels, Gauge> = Family::default();
    for r in s.replicas.iter().filter(|_| s.role == "primary") {
        let labels = ReplicaLabels {
            replica: r.id.to_string(),
            kind: r.kind.clone(),
        };
        lag_entries.get_or_create(&labels).set(r.lag_entries as i64);
        lag_ms.get_or_create(&labels).set(r.lag_ms as i64);
        demoted.get_or_create(&labels).set(i64::from(r.health == "demoted"));
    }
    registry.register(
        "replica_lag_entries",
        "Entries a replica lacks (primary's view)",
        lag_entries,
    );
    registry.register(
        "replica_lag_ms",
        "Age of the oldest entry a replica lacks (primary's view)",
        lag_ms,
    );
    registry.register("replica_demoted", "1 while a sync replica is demoted to async", demoted);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).map_err(|e| e.to_string())?;
    Ok(text)
}

async fn metrics(State(core): State<Arc<Core>>) -> impl IntoResponse {
    match render(&core).await {
        Ok(text) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("no metrics now: {e}")).into_response(),
    }
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(
    core: Arc<Core>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new().route("/metrics", get(metrics)).with_state(core);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}
