//! `tandem confserv --mode master`: one master Configuration Server of the primary/backup pair
//! (`tandem_confserv::serve`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use tandem_confserv::node::defaults;
use tandem_confserv::{Bootstrap, ServerConfig};
use tandem_tls::TlsFiles;

/// Which configuration server to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConfservMode {
    /// The master: the only writer of the configuration database (run two: primary and backup).
    Master,
}

#[derive(Args)]
pub struct ConfservArgs {
    /// Which server: `master` (proxies are not built yet).
    #[arg(long, value_enum)]
    mode: ConfservMode,
    /// HOST:PORT to serve clients on; port 0 picks a free port.
    #[arg(long)]
    listen: String,
    /// HOST:PORT clients reach this server at (told to clients of the other server; default:
    /// the bound address).
    #[arg(long)]
    advertise: Option<String>,
    /// Every database replica's HOST:PORT (both sites), comma-separated.
    #[arg(long, env = "TANDEM_ENDPOINTS", value_delimiter = ',', required = true)]
    db_endpoints: Vec<String>,
    /// This server's name, shown as the holder of the master lease (default: the address).
    #[arg(long)]
    name: Option<String>,
    /// TTL of the master lease: after a crash of the primary, the backup takes over within it.
    #[arg(long, default_value_t = defaults::LEASE_TTL_MS)]
    lease_ttl_ms: u64,
    /// Records a reconnecting client can catch up from; beyond, it must reload.
    #[arg(long, default_value_t = defaults::HISTORY_MAX_RECORDS)]
    history_max_records: usize,
    /// Days records serve a catch-up and are kept.
    #[arg(long, default_value_t = defaults::HISTORY_DAYS)]
    history_days: u64,
    /// The same age in milliseconds (overrides --history-days; for tests).
    #[arg(long)]
    history_max_age_ms: Option<u64>,
    /// Records kept in the database for the audit trail (at least --history-max-records).
    #[arg(long, default_value_t = defaults::LOG_KEEP_RECORDS)]
    log_keep_records: u64,
    /// How often the primary removes records beyond retention.
    #[arg(long, default_value_t = defaults::RETENTION_INTERVAL_MS)]
    retention_interval_ms: u64,
    /// User name of the administrator to create when the database holds no configuration.
    #[arg(long, requires = "bootstrap_password_file")]
    bootstrap_admin: Option<String>,
    /// File holding the administrator's password, or its argon2 hash (`$argon2id$…`).
    #[arg(long, requires = "bootstrap_admin")]
    bootstrap_password_file: Option<PathBuf>,
    /// How long a session token is valid.
    #[arg(long, default_value_t = defaults::SESSION_TTL_MS)]
    session_ttl_ms: u64,
    /// The largest request accepted, in bytes.
    #[arg(long, default_value_t = defaults::REQUEST_BYTES_MAX)]
    request_bytes_max: usize,
    /// Once listening, write the bound HOST:PORT to this file.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// TLS files, for this server's clients and for its links to the database.
    #[command(flatten)]
    tls: TlsFiles,
}

fn bootstrap(args: &ConfservArgs) -> anyhow::Result<Option<Bootstrap>> {
    let (Some(admin), Some(file)) = (&args.bootstrap_admin, &args.bootstrap_password_file) else {
        return Ok(None);
    };
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        bail!(
            "{} is empty: it must hold the administrator's password or its argon2 hash",
            file.display()
        );
    }
    let password_hash = if tandem_config::password::is_password_hash(secret) {
        secret.to_owned()
    } else {
        tandem_config::password::hash_password(secret).context("cannot hash the bootstrap password")?
    };
    Ok(Some(Bootstrap {
        admin_user: admin.clone(),
        password_hash,
    }))
}

pub async fn run(args: ConfservArgs) -> anyhow::Result<()> {
    let ConfservMode::Master = args.mode;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let bound = listener
        .local_addr()
        .context("cannot read the bound address")?
        .to_string();
    let advertise = args.advertise.clone().unwrap_or(bound.clone());
    let name = args.name.clone().unwrap_or(advertise.clone());
    let mut config = ServerConfig::new(&name, &advertise, args.db_endpoints.clone());
    config.db_tls = args.tls.clone();
    config.tls = args.tls.clone();
    config.lease_ttl_ms = args.lease_ttl_ms;
    config.history_max_records = args.history_max_records;
    config.history_max_age_ms = args
        .history_max_age_ms
        .unwrap_or(args.history_days.saturating_mul(24 * 3600 * 1000));
    config.log_keep_records = args.log_keep_records;
    config.retention_interval = Duration::from_millis(args.retention_interval_ms.max(10));
    config.bootstrap = bootstrap(&args)?;
    config.session_ttl_ms = args.session_ttl_ms;
    config.request_bytes_max = args.request_bytes_max;
    if let Some(path) = &args.ready_file {
        // Written atomically so a reader never sees half an address.
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, format!("{bound}\n")).with_context(|| format!("cannot write {}", tmp.display()))?;
        std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    tandem_confserv::serve(config, listener, crate::db::shutdown_signal())
        .await
        .with_context(|| format!("configuration server {name}"))
}
