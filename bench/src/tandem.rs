//! Tandem under test: three `tandem db serve` processes on 127.0.0.1 (default timers, sync mode
//! strict, SQLite with `synchronous=FULL`), formed into a replica set of three `sync` replicas,
//! driven through `tandem-client`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use futures::StreamExt;
use tandem_client::{Client, ClientOptions, Member, Txn, TxnOutcome};
use tokio::sync::mpsc;

use crate::proc::{self, Memory, Proc, Spec};
use crate::target::{Cluster, Read, Store, Watcher};

/// How long a replica may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(30);
const MEMBERS: usize = 3;

/// A Tandem client.
#[derive(Clone)]
pub struct TandemStore {
    client: Client,
    endpoints: Arc<Vec<String>>,
}

impl TandemStore {
    pub fn new(endpoints: Vec<String>, options: ClientOptions) -> anyhow::Result<TandemStore> {
        let client = Client::new(endpoints.clone(), options).context("cannot create the Tandem client")?;
        Ok(TandemStore {
            client,
            endpoints: Arc::new(endpoints),
        })
    }
}

fn committed(outcome: TxnOutcome) -> anyhow::Result<()> {
    match outcome {
        TxnOutcome::Committed { .. } => Ok(()),
        other => bail!("transaction not committed: {other:?}"),
    }
}

impl Store for TandemStore {
    async fn put(&self, key: String, value: Vec<u8>) -> anyhow::Result<()> {
        self.client.put(&key, value).await?;
        Ok(())
    }

    async fn put_batch(&self, pairs: Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
        let txn = pairs
            .into_iter()
            .fold(Txn::new(), |txn, (key, value)| txn.put(key, value));
        committed(self.client.txn(txn).await?)
    }

    async fn delete(&self, key: String) -> anyhow::Result<()> {
        self.client.delete(&key).await?;
        Ok(())
    }

    async fn get(&self, key: String, read: Read) -> anyhow::Result<Option<Vec<u8>>> {
        let kv = match read {
            Read::Linearizable => self.client.get(&key).await?,
            Read::Stale { worker } => {
                self.client
                    .get_stale(&self.endpoints[worker % self.endpoints.len()], &key)
                    .await?
            }
        };
        Ok(kv.map(|kv| kv.value))
    }

    async fn watch(
        &self,
        prefix: String,
        count: usize,
        tx: mpsc::Sender<(String, Instant)>,
    ) -> anyhow::Result<Watcher> {
        // Start after the primary's current revision, so that no history is replayed.
        let primary = self.client.discover().await?;
        let revision = self.client.status(&primary).await?.revision;
        // The client's watches on one replica share one stream; one task reads them all (as one
        // task reads etcd's stream of all its watches).
        let mut watches = Vec::with_capacity(count);
        for _ in 0..count {
            let watch = self.client.watch(&prefix, revision).await?;
            watches.push(futures::stream::unfold(watch, |mut watch| async move {
                let batch = watch.next().await?;
                Some((batch, watch))
            }));
        }
        let mut all = futures::stream::select_all(watches.into_iter().map(Box::pin));
        let task = tokio::spawn(async move {
            while let Some(Ok(batch)) = all.next().await {
                let now = Instant::now();
                for event in batch {
                    if tx.send((event.key, now)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Watcher { tasks: vec![task] })
    }
}

/// One replica process and what it needs to be restarted.
struct Replica {
    id: u64,
    addr: String,
    spec: Spec,
    /// The file the replica writes its bound address to once listening.
    ready: PathBuf,
    proc: Option<Proc>,
}

/// Three running Tandem replicas.
pub struct TandemCluster {
    replicas: Vec<Replica>,
    pid_file: PathBuf,
    store: TandemStore,
}

impl TandemCluster {
    /// Starts three replicas under `root` (each given `extra` serve flags, e.g. a sync mode) and
    /// forms the replica set.
    pub async fn start(bin: &Path, root: &Path, pid_file: &Path, extra: &[&str]) -> anyhow::Result<TandemCluster> {
        let mut replicas = Vec::new();
        for index in 0..MEMBERS {
            let id = index as u64 + 1;
            let dir = root.join(format!("replica-{id}"));
            std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            let ready = root.join(format!("replica-{id}.ready"));
            let spec = serve_spec(bin, root, id, &dir, "127.0.0.1:0", &ready, extra);
            let mut proc = proc::spawn(&spec, pid_file)?;
            let addr = proc::wait_for_file(&ready, &mut proc, START_TIMEOUT).await?;
            // Restarts listen on the same address (the replica set knows it by it).
            let spec = serve_spec(bin, root, id, &dir, &addr, &ready, extra);
            replicas.push(Replica {
                id,
                addr,
                spec,
                ready,
                proc: Some(proc),
            });
        }
        let endpoints: Vec<String> = replicas.iter().map(|r| r.addr.clone()).collect();
        let store = TandemStore::new(endpoints, ClientOptions::default())?;
        let members: Vec<Member> = replicas
            .iter()
            .map(|r| Member {
                id: r.id,
                addr: r.addr.clone(),
                kind: "sync".into(),
            })
            .collect();
        let via = members[0].addr.clone();
        store
            .client
            .initialize(&via, members)
            .await
            .context("cannot form the Tandem replica set")?;
        let cluster = TandemCluster {
            replicas,
            pid_file: pid_file.to_owned(),
            store,
        };
        cluster.wait_healthy(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.replicas.iter().map(|r| r.addr.clone()).collect()
    }

    /// The sync mode the primary reports (`available` or `strict`).
    pub async fn sync_mode(&self) -> anyhow::Result<String> {
        let primary = self.store.client.discover().await?;
        Ok(self.store.client.status(&primary).await?.sync_mode)
    }

    /// Pids of the running replicas (for profiling), by replica index.
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.replicas.iter().map(|r| r.proc.as_ref().map(Proc::pid)).collect()
    }

    /// Checks once whether the replica set is healthy; `Err` says why not.
    async fn health(&self) -> anyhow::Result<()> {
        let answers = self.store.client.status_all().await;
        let mut primary = None;
        for (addr, answer) in &answers {
            let status = answer.as_ref().map_err(|e| anyhow!("{addr}: {e}"))?;
            match status.role.as_str() {
                "primary" if primary.is_none() => primary = Some(status),
                "primary" => bail!("two primaries"),
                "secondary" => {}
                other => bail!("{addr} is {other}"),
            }
        }
        let primary = primary.context("no primary")?;
        if primary.replicas.len() != MEMBERS {
            bail!("primary lists {} replicas", primary.replicas.len());
        }
        for replica in &primary.replicas {
            if replica.id != primary.id && (replica.health != "ok" || replica.lag_entries > 0) {
                bail!(
                    "replica {} is {} with {} entries of lag",
                    replica.id,
                    replica.health,
                    replica.lag_entries
                );
            }
        }
        for (addr, answer) in &answers {
            if let Ok(status) = answer {
                if status.term != primary.term || status.primary_id != Some(primary.id) {
                    bail!("{addr} does not follow the primary yet");
                }
            }
        }
        Ok(())
    }
}

fn serve_spec(bin: &Path, root: &Path, id: u64, dir: &Path, listen: &str, ready: &Path, extra: &[&str]) -> Spec {
    let mut args: Vec<OsString> = vec![
        "db".into(),
        "serve".into(),
        "--id".into(),
        id.to_string().into(),
        "--data-dir".into(),
        dir.into(),
        "--listen".into(),
        listen.into(),
        "--ready-file".into(),
        ready.into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    Spec {
        program: bin.to_owned(),
        args,
        log: root.join(format!("replica-{id}.log")),
        env: Vec::new(),
    }
}

impl Cluster for TandemCluster {
    type Store = TandemStore;

    fn name(&self) -> &'static str {
        "Tandem"
    }

    fn store(&self) -> TandemStore {
        self.store.clone()
    }

    async fn store_with_timeout(&self, attempt: Duration) -> anyhow::Result<TandemStore> {
        TandemStore::new(
            self.endpoints(),
            ClientOptions {
                attempt_timeout: attempt,
                ..ClientOptions::default()
            },
        )
    }

    async fn leader(&self) -> anyhow::Result<usize> {
        let primary = self.store.client.discover().await?;
        self.replicas
            .iter()
            .position(|r| r.addr == primary)
            .with_context(|| format!("unknown primary {primary}"))
    }

    async fn kill(&mut self, member: usize) -> anyhow::Result<()> {
        let replica = &mut self.replicas[member];
        if let Some(mut proc) = replica.proc.take() {
            proc.kill9().await?;
        }
        Ok(())
    }

    async fn restart(&mut self, member: usize) -> anyhow::Result<()> {
        let replica = &mut self.replicas[member];
        if replica.proc.is_some() {
            bail!("replica {} is still running", replica.id);
        }
        let _ = std::fs::remove_file(&replica.ready);
        let mut proc = proc::spawn(&replica.spec, &self.pid_file)?;
        proc::wait_for_file(&replica.ready, &mut proc, START_TIMEOUT).await?;
        replica.proc = Some(proc);
        Ok(())
    }

    async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let why = match self.health().await {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            if Instant::now() > deadline {
                return Err(why.context(format!("Tandem replica set not healthy within {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn memory(&self) -> Vec<Option<Memory>> {
        self.replicas
            .iter()
            .map(|r| r.proc.as_ref().and_then(|p| p.memory().ok()))
            .collect()
    }

    async fn stop(&mut self) {
        for replica in &mut self.replicas {
            if let Some(mut proc) = replica.proc.take() {
                if let Err(e) = proc.kill9().await {
                    eprintln!("warning: replica {}: {e:#}", replica.id);
                }
            }
        }
    }
}
