//! `tandem demo`: the main job for now — three replicas of the configuration database as
//! separate processes on loopback, formed into a replica set, written to and read back, with the
//! status table showing who is primary. Runs until Ctrl-C (or exits at once with `--once`), and
//! removes everything it created.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;
use tandem_client::{Client, ClientOptions, Member};
use tokio::process::{Child, Command};

#[derive(Args)]
pub struct DemoArgs {
    /// Write, read back, print the status once, then stop and clean up.
    #[arg(long)]
    once: bool,
    /// Keys to write.
    #[arg(long, default_value_t = 100)]
    keys: u32,
    /// Keep the replicas' data here instead of a temporary directory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
}

/// How long a replica may take to start listening.
const START_DEADLINE: Duration = Duration::from_secs(20);

async fn wait_ready(file: &Path, child: &mut Child) -> anyhow::Result<String> {
    let deadline = Instant::now() + START_DEADLINE;
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            return Ok(text.trim().to_owned());
        }
        if let Some(status) = child.try_wait()? {
            bail!(
                "replica exited before listening ({status}); see its log beside {}",
                file.display()
            );
        }
        if Instant::now() > deadline {
            bail!("replica did not start listening within {START_DEADLINE:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    let temp = tempfile::tempdir().context("cannot create a temporary directory")?;
    let root = args.data_dir.clone().unwrap_or_else(|| temp.path().to_owned());
    let exe = std::env::current_exe().context("cannot find the tandem executable")?;
    let kinds = ["sync", "sync", "sync"];

    println!(
        "--- starting {} replicas on loopback (data in {})",
        kinds.len(),
        root.display()
    );
    let mut children = Vec::new();
    let mut members = Vec::new();
    for (index, kind) in kinds.iter().enumerate() {
        let id = index as u64 + 1;
        let dir = root.join(format!("replica-{id}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let ready = dir.join("ready");
        let _ = std::fs::remove_file(&ready);
        let log = std::fs::File::create(dir.join("replica.log")).context("cannot create the replica log")?;
        let mut child = Command::new(&exe)
            .args(["db", "serve", "--id", &id.to_string(), "--listen", "127.0.0.1:0"])
            .arg("--data-dir")
            .arg(&dir)
            .arg("--ready-file")
            .arg(&ready)
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a replica")?;
        let addr = wait_ready(&ready, &mut child).await?;
        println!("    replica {id} ({kind}) listening on {addr}");
        members.push(Member {
            id,
            addr,
            kind: kind.to_string(),
        });
        children.push(child);
    }
    let endpoints: Vec<String> = members.iter().map(|m| m.addr.clone()).collect();
    let client = Client::new(endpoints.clone(), ClientOptions::default())?;

    println!("--- forming the replica set");
    client
        .initialize(&members[0].addr, members.clone())
        .await
        .context("initialisation failed")?;
    let primary = client.discover().await?;
    println!("    primary: {primary}");

    println!("--- writing {} keys", args.keys);
    let started = Instant::now();
    for i in 0..args.keys {
        client
            .put(&format!("demo/key-{i:05}"), format!("value {i}").into_bytes())
            .await?;
    }
    println!("    {} writes in {} ms", args.keys, started.elapsed().as_millis());

    println!("--- reading back");
    let kvs = client.range("demo/", None).await?;
    let intact = kvs.len() == args.keys as usize
        && kvs
            .iter()
            .enumerate()
            .all(|(i, kv)| kv.value == format!("value {i}").into_bytes());
    if !intact {
        bail!("read back {} keys, expected {} with their values", kvs.len(), args.keys);
    }
    println!("    all {} keys read back with their values", kvs.len());

    println!("--- status");
    crate::db::print_status(&client.status_all().await);
    println!("\nTry: tandem db status --endpoints {}", endpoints.join(","));

    if !args.once {
        println!("Running until Ctrl-C.");
        crate::db::shutdown_signal().await;
    }
    println!("--- stopping");
    for child in &mut children {
        child.start_kill().ok();
    }
    for child in &mut children {
        child.wait().await.ok();
    }
    Ok(())
}
