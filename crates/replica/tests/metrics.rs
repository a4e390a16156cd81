//! Prometheus metrics: the primary's `/metrics` shows its role and each replica's lag.

mod common;

use std::time::Duration;

use common::start_set;
use tandem_tls::TlsFiles;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

async fn scrape(addr: &str) -> String {
    let mut socket = tokio::net::TcpStream::connect(addr).await.expect("connect metrics");
    socket
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: test\r\n\r\n")
        .await
        .expect("request");
    let mut response = String::new();
    socket.read_to_string(&mut response).await.expect("response");
    response
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_exports_role_and_replica_lag() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut replicas, client) = start_set(3, root.path(), |_| TlsFiles::default()).await;
    client.put("m/1", "x").await.expect("put");
    let primary = client.discover().await.expect("primary");
    let primary = replicas.iter().find(|r| r.addr == primary).expect("primary is ours");

    let text = scrape(&primary.metrics_addr).await;
    assert!(
        text.starts_with("HTTP/1.0 200") || text.starts_with("HTTP/1.1 200"),
        "{text}"
    );
    assert!(text.contains("tandem_db_role{role=\"primary\"} 1"), "{text}");
    for replica in replicas.iter().filter(|r| r.addr != primary.addr) {
        let line = format!(
            "tandem_db_replica_lag_entries{{replica=\"{}\",kind=\"sync\"}}",
            replica.id
        );
        assert!(text.contains(&line), "missing {line} in {text}");
    }
    assert!(text.contains("tandem_db_sync_demotions_total 0"), "{text}");
    // The put was checkpointed into both files (a checkpoint follows a write within 25 ms).
    for file in ["log", "state"] {
        let line = format!("tandem_db_checkpoints_total{{file=\"{file}\"}} ");
        let addr = primary.metrics_addr.clone();
        common::eventually(
            &format!("a checkpoint of {file} counted"),
            Duration::from_secs(10),
            async || {
                let text = scrape(&addr).await;
                let count: u64 = text
                    .lines()
                    .find_map(|l| l.strip_prefix(&line))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                count > 0
            },
        )
        .await;
    }
    assert!(
        text.contains("tandem_db_checkpoint_failures_total{file=\"state\"} 0"),
        "{text}"
    );

    let secondary = replicas.iter().find(|r| r.addr != primary.addr).expect("a secondary");
    let text = scrape(&secondary.metrics_addr).await;
    assert!(text.contains("tandem_db_role{role=\"secondary\"} 1"), "{text}");

    for replica in &mut replicas {
        replica.stop().await;
    }
}
