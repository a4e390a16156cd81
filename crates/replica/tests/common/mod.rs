//! In-process replicas for the replica crate's tests: each replica is `tandem_replica::serve` on
//! its own loopback listener (port 0) and its own temporary data directory, stopped through a
//! oneshot. Process-level fault tests (kill -9, SIGSTOP) live with the binary instead.

#![allow(dead_code)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use tandem_client::{Client, ClientOptions, Member};
use tandem_replica::{ReplicaConfig, StartError};
use tandem_tls::TlsFiles;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestReplica {
    pub id: u64,
    pub addr: String,
    /// Where `/metrics` is served.
    pub metrics_addr: String,
    pub dir: PathBuf,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), StartError>>>,
}

impl TestReplica {
    /// Starts a replica in `dir` (created when missing) on a free loopback port.
    pub async fn start(id: u64, dir: PathBuf, tls: TlsFiles) -> TestReplica {
        Self::start_with(id, dir, tls, |_| {}).await
    }

    /// Starts a replica whose configuration `adjust` may change.
    pub async fn start_with(
        id: u64,
        dir: PathBuf,
        tls: TlsFiles,
        adjust: impl FnOnce(&mut ReplicaConfig),
    ) -> TestReplica {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr").to_string();
        let metrics = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let metrics_addr = metrics.local_addr().expect("local addr").to_string();
        let mut config = ReplicaConfig::new(id, "test", dir.clone(), addr.clone());
        config.tls = tls;
        adjust(&mut config);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(tandem_replica::serve_with_metrics(
            config,
            listener,
            Some(metrics),
            async move {
                let _ = stopped.await;
            },
        ));
        TestReplica {
            id,
            addr,
            metrics_addr,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Stops the replica gracefully and waits for it.
    pub async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

/// Starts `n` sync replicas and forms them into a replica set; returns them and a client.
pub async fn start_set(n: u64, root: &std::path::Path, tls: impl Fn(u64) -> TlsFiles) -> (Vec<TestReplica>, Client) {
    start_set_with(n, root, tls, |_| {}).await
}

/// [`start_set`], each replica's configuration changed by `adjust`.
pub async fn start_set_with(
    n: u64,
    root: &std::path::Path,
    tls: impl Fn(u64) -> TlsFiles,
    adjust: impl Fn(&mut ReplicaConfig),
) -> (Vec<TestReplica>, Client) {
    let mut replicas = Vec::new();
    for id in 1..=n {
        replicas.push(TestReplica::start_with(id, root.join(format!("r{id}")), tls(id), &adjust).await);
    }
    let members: Vec<Member> = replicas
        .iter()
        .map(|r| Member {
            id: r.id,
            addr: r.addr.clone(),
            kind: "sync".into(),
        })
        .collect();
    let endpoints = replicas.iter().map(|r| r.addr.clone()).collect();
    let options = ClientOptions {
        tls: tls(0),
        ..ClientOptions::default()
    };
    let client = Client::new(endpoints, options).expect("client");
    client.initialize(&replicas[0].addr, members).await.expect("initialize");
    client.discover().await.expect("a primary is elected");
    (replicas, client)
}

/// Polls `check` until it returns true or `deadline` passes.
pub async fn eventually(what: &str, deadline: Duration, mut check: impl AsyncFnMut() -> bool) {
    let until = Instant::now() + deadline;
    while !check().await {
        assert!(Instant::now() < until, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
