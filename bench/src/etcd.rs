//! etcd under test: three `etcd` members on 127.0.0.1 with free ports and etcd's defaults
//! (heartbeat 100 ms, election timeout 1000 ms, fsync on), driven through the `etcd-client`
//! crate with every member's endpoint (the client balances requests across them, as etcd users
//! do).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use etcd_client::{Client, ConnectOptions, GetOptions, Txn, TxnOp, WatchOptions};
use tokio::sync::mpsc;

use crate::proc::{self, Memory, Proc, Spec};
use crate::target::{Cluster, Read, Store, Watcher};

const MEMBERS: usize = 3;
/// How long a watch may take to be confirmed by the server.
const WATCH_CREATE_TIMEOUT: Duration = Duration::from_secs(10);

/// An etcd client.
#[derive(Clone)]
pub struct EtcdStore {
    client: Client,
}

impl EtcdStore {
    pub async fn connect(endpoints: &[String], timeout: Option<Duration>) -> anyhow::Result<EtcdStore> {
        let mut options = ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
        if let Some(timeout) = timeout {
            options = options.with_timeout(timeout);
        }
        let client = Client::connect(endpoints, Some(options))
            .await
            .context("cannot connect to etcd")?;
        Ok(EtcdStore { client })
    }
}

impl Store for EtcdStore {
    async fn put(&self, key: String, value: Vec<u8>) -> anyhow::Result<()> {
        self.client.clone().put(key, value, None).await?;
        Ok(())
    }

    async fn put_batch(&self, pairs: Vec<(String, Vec<u8>)>) -> anyhow::Result<()> {
        let ops: Vec<TxnOp> = pairs
            .into_iter()
            .map(|(key, value)| TxnOp::put(key, value, None))
            .collect();
        let response = self.client.clone().txn(Txn::new().and_then(ops)).await?;
        if !response.succeeded() {
            bail!("etcd transaction not committed");
        }
        Ok(())
    }

    async fn delete(&self, key: String) -> anyhow::Result<()> {
        self.client.clone().delete(key, None).await?;
        Ok(())
    }

    async fn get(&self, key: String, read: Read) -> anyhow::Result<Option<Vec<u8>>> {
        let options = match read {
            Read::Linearizable => None,
            Read::Stale { .. } => Some(GetOptions::new().with_serializable()),
        };
        let response = self.client.clone().get(key, options).await?;
        Ok(response.kvs().first().map(|kv| kv.value().to_vec()))
    }

    async fn watch(
        &self,
        prefix: String,
        count: usize,
        tx: mpsc::Sender<(String, Instant)>,
    ) -> anyhow::Result<Watcher> {
        let options = WatchOptions::new().with_prefix();
        let mut stream = self.client.clone().watch(prefix.clone(), Some(options.clone())).await?;
        for _ in 1..count {
            stream.watch(prefix.clone(), Some(options.clone())).await?;
        }
        // Each watch is confirmed by an answer of its own; events before it would not be
        // delivered.
        for _ in 0..count {
            let answer = tokio::time::timeout(WATCH_CREATE_TIMEOUT, stream.message())
                .await
                .context("etcd did not confirm a watch in time")??
                .context("etcd closed the watch stream")?;
            if !answer.created() {
                bail!("etcd answered a watch with something other than its confirmation");
            }
        }
        let task = tokio::spawn(async move {
            while let Ok(Some(response)) = stream.message().await {
                let now = Instant::now();
                // One answer per watch (its id), so each event counts once per watch.
                for event in response.events() {
                    let Some(kv) = event.kv() else { continue };
                    let key = String::from_utf8_lossy(kv.key()).into_owned();
                    if tx.send((key, now)).await.is_err() {
                        return;
                    }
                }
            }
        });
        Ok(Watcher { tasks: vec![task] })
    }
}

/// One etcd member process and what it needs to be restarted.
struct Member {
    name: String,
    client_url: String,
    spec: Spec,
    proc: Option<Proc>,
}

/// Three running etcd members.
pub struct EtcdCluster {
    members: Vec<Member>,
    pid_file: PathBuf,
    store: EtcdStore,
}

impl EtcdCluster {
    /// Starts three members under `root` as one new cluster.
    pub async fn start(bin: &Path, root: &Path, pid_file: &Path) -> anyhow::Result<EtcdCluster> {
        let ports = proc::free_ports(MEMBERS * 2)?;
        let peer_url = |i: usize| format!("http://127.0.0.1:{}", ports[MEMBERS + i]);
        let initial_cluster = (0..MEMBERS)
            .map(|i| format!("m{}={}", i + 1, peer_url(i)))
            .collect::<Vec<_>>()
            .join(",");
        let token = format!("tandem-bench-{}", std::process::id());
        let mut members = Vec::new();
        for (i, client_port) in ports.iter().take(MEMBERS).enumerate() {
            let name = format!("m{}", i + 1);
            let client_url = format!("http://127.0.0.1:{client_port}");
            let dir = root.join(format!("etcd-{name}"));
            let args: Vec<OsString> = vec![
                "--name".into(),
                name.clone().into(),
                "--data-dir".into(),
                dir.into(),
                "--listen-client-urls".into(),
                client_url.clone().into(),
                "--advertise-client-urls".into(),
                client_url.clone().into(),
                "--listen-peer-urls".into(),
                peer_url(i).into(),
                "--initial-advertise-peer-urls".into(),
                peer_url(i).into(),
                "--initial-cluster".into(),
                initial_cluster.clone().into(),
                "--initial-cluster-token".into(),
                token.clone().into(),
                "--initial-cluster-state".into(),
                "new".into(),
                "--logger".into(),
                "zap".into(),
                "--log-outputs".into(),
                "stderr".into(),
            ];
            let spec = Spec {
                program: bin.to_owned(),
                args,
                log: root.join(format!("etcd-{name}.log")),
                // Debian's etcd refuses nothing on amd64; keep the environment clean of ETCD_*.
                env: Vec::new(),
            };
            let proc = proc::spawn(&spec, pid_file)?;
            members.push(Member {
                name,
                client_url,
                spec,
                proc: Some(proc),
            });
        }
        let endpoints: Vec<String> = members.iter().map(|m| m.client_url.clone()).collect();
        let store = EtcdStore::connect(&endpoints, None).await?;
        let cluster = EtcdCluster {
            members,
            pid_file: pid_file.to_owned(),
            store,
        };
        cluster.wait_healthy(Duration::from_secs(60)).await?;
        Ok(cluster)
    }

    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url.clone()).collect()
    }

    /// Pids of the running members (for profiling), by member index.
    pub fn pids(&self) -> Vec<Option<u32>> {
        self.members.iter().map(|m| m.proc.as_ref().map(Proc::pid)).collect()
    }

    /// One member's status through a client of that member alone: (own id, leader id, applied
    /// index, term).
    async fn member_status(&self, member: usize) -> anyhow::Result<(u64, u64, u64, u64)> {
        let url = &self.members[member].client_url;
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(1));
        let mut client = Client::connect([url], Some(options)).await?;
        let status = client.status().await?;
        let own = status
            .header()
            .map(|h| h.member_id())
            .context("status without a header")?;
        Ok((own, status.leader(), status.raft_applied_index(), status.raft_term()))
    }

    async fn health(&self) -> anyhow::Result<()> {
        let asks = (0..MEMBERS).map(|i| self.member_status(i));
        let answers = futures::future::join_all(asks).await;
        let mut statuses = Vec::new();
        for (member, answer) in self.members.iter().zip(answers) {
            statuses.push(answer.map_err(|e| anyhow!("{}: {e:#}", member.name))?);
        }
        let (_, leader, _, term) = statuses[0];
        if leader == 0 {
            bail!("no leader");
        }
        if !statuses.iter().any(|s| s.0 == leader) {
            bail!("the leader is not one of the members");
        }
        if statuses.iter().any(|s| s.1 != leader || s.3 != term) {
            bail!("members disagree on the leader");
        }
        let leader_applied = statuses.iter().find(|s| s.0 == leader).map(|s| s.2).unwrap_or(0);
        if statuses.iter().any(|s| s.2 < leader_applied) {
            bail!("a member has not caught up");
        }
        Ok(())
    }
}

impl Cluster for EtcdCluster {
    type Store = EtcdStore;

    fn name(&self) -> &'static str {
        "etcd"
    }

    fn store(&self) -> EtcdStore {
        self.store.clone()
    }

    async fn store_with_timeout(&self, attempt: Duration) -> anyhow::Result<EtcdStore> {
        EtcdStore::connect(&self.endpoints(), Some(attempt)).await
    }

    async fn leader(&self) -> anyhow::Result<usize> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let asks = (0..MEMBERS).map(|i| self.member_status(i));
            let answers: Vec<Option<(u64, u64, u64, u64)>> = futures::future::join_all(asks)
                .await
                .into_iter()
                .map(Result::ok)
                .collect();
            if let Some(leader) = answers.iter().flatten().map(|s| s.1).find(|&l| l != 0) {
                if let Some(index) = answers.iter().position(|s| s.map(|s| s.0) == Some(leader)) {
                    return Ok(index);
                }
            }
            if Instant::now() > deadline {
                bail!("no etcd leader found");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn kill(&mut self, member: usize) -> anyhow::Result<()> {
        if let Some(mut proc) = self.members[member].proc.take() {
            proc.kill9().await?;
        }
        Ok(())
    }

    async fn restart(&mut self, member: usize) -> anyhow::Result<()> {
        let member = &mut self.members[member];
        if member.proc.is_some() {
            bail!("etcd member {} is still running", member.name);
        }
        // With its data directory present, etcd ignores the --initial-cluster* flags.
        member.proc = Some(proc::spawn(&member.spec, &self.pid_file)?);
        Ok(())
    }

    async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let why = match self.health().await {
                Ok(()) => return Ok(()),
                Err(why) => why,
            };
            for member in &self.members {
                if member.proc.is_none() {
                    bail!("etcd member {} is not running", member.name);
                }
            }
            if Instant::now() > deadline {
                return Err(why.context(format!("etcd cluster not healthy within {timeout:?}")));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn memory(&self) -> Vec<Option<Memory>> {
        self.members
            .iter()
            .map(|m| m.proc.as_ref().and_then(|p| p.memory().ok()))
            .collect()
    }

    async fn stop(&mut self) {
        for member in &mut self.members {
            if let Some(mut proc) = member.proc.take() {
                if let Err(e) = proc.kill9().await {
                    eprintln!("warning: etcd member {}: {e:#}", member.name);
                }
            }
        }
    }
}
