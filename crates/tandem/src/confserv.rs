//! `tandem confserv --mode master`: one master Configuration Server of the primary/backup pair
//! (`tandem_confserv::serve`); `tandem confserv --mode proxy`: one Configuration Server Proxy of
//! a site's pair (`tandem_confserv::serve_proxy`).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Args, ValueEnum};
use tandem_confserv::node::defaults;
use tandem_confserv::proxy::defaults as proxy_defaults;
use tandem_confserv::{Bootstrap, Listeners, ProxyConfig, ServerConfig};
use tandem_tls::TlsFiles;

/// Which configuration server to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ConfservMode {
    /// The master: the only writer of the configuration database (run two: primary and backup).
    Master,
    /// A proxy: serves a site's clients from a copy kept current from the primary master, and
    /// keeps serving reads while no master is reachable (run two per site).
    Proxy,
}

#[derive(Args)]
pub struct ConfservArgs {
    /// Which server: `master` or `proxy`.
    #[arg(long, value_enum)]
    mode: ConfservMode,
    /// HOST:PORT to serve clients on; port 0 picks a free port.
    #[arg(long)]
    listen: String,
    /// HOST:PORT clients reach this server at (told to clients of the other server; default:
    /// the bound address).
    #[arg(long)]
    advertise: Option<String>,
    /// Master: every database replica's HOST:PORT (both sites), comma-separated.
    #[arg(long, env = "TANDEM_ENDPOINTS", value_delimiter = ',')]
    db_endpoints: Vec<String>,
    /// Proxy: every master's HOST:PORT that may ever be the primary (both sites' pairs),
    /// comma-separated.
    #[arg(long, value_delimiter = ',')]
    masters: Vec<String>,
    /// Proxy: the Super Administrator it logs in to the masters as.
    #[arg(long)]
    user: Option<String>,
    /// Proxy: file holding that user's password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// Proxy: how often the master sends a heartbeat on the link.
    #[arg(long, default_value_t = proxy_defaults::HEARTBEAT_INTERVAL_MS)]
    heartbeat_interval_ms: u64,
    /// Proxy: silence on the link after which the master is lost and the proxy enters limited
    /// mode.
    #[arg(long, default_value_t = proxy_defaults::HEARTBEAT_TIMEOUT_MS)]
    heartbeat_timeout_ms: u64,
    /// Proxy: hold only these tenants (by name; the environment tenant always), comma-separated;
    /// default: the whole configuration.
    #[arg(long, value_delimiter = ',')]
    tenants: Vec<String>,
    /// This server's name, shown as the holder of the master lease (default: the address).
    #[arg(long)]
    name: Option<String>,
    /// Master: TTL of the master lease: after a crash of the primary, the backup takes over
    /// within it.
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
    /// Master: user name of the administrator to create when the database holds no
    /// configuration.
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
    /// Serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks a free port): role,
    /// proxy mode, last notification number, subscribers.
    #[arg(long, value_name = "HOST:PORT")]
    metrics_listen: Option<String>,
    /// Once listening, write the bound HOST:PORT to this file (and, with --metrics-listen, the
    /// metrics HOST:PORT on a second line).
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
    let secret = read_password(file)?;
    let password_hash = if tandem_config::password::is_password_hash(&secret) {
        secret
    } else {
        tandem_config::password::hash_password(&secret).context("cannot hash the bootstrap password")?
    };
    Ok(Some(Bootstrap {
        admin_user: admin.clone(),
        password_hash,
    }))
}

/// Refuses flags of the other mode, and a mode's missing required flags, by name.
fn check_mode_flags(args: &ConfservArgs) -> anyhow::Result<()> {
    match args.mode {
        ConfservMode::Master => {
            if args.db_endpoints.is_empty() {
                bail!("--mode master needs --db-endpoints (every database replica's HOST:PORT)");
            }
            let proxy_only = [
                ("--masters", !args.masters.is_empty()),
                ("--user", args.user.is_some()),
                ("--password-file", args.password_file.is_some()),
                ("--tenants", !args.tenants.is_empty()),
            ];
            if let Some((flag, _)) = proxy_only.iter().find(|(_, given)| *given) {
                bail!("{flag} is for --mode proxy only");
            }
        }
        ConfservMode::Proxy => {
            if args.masters.is_empty() {
                bail!("--mode proxy needs --masters (every master's HOST:PORT, both sites)");
            }
            if args.user.is_none() || args.password_file.is_none() {
                bail!("--mode proxy needs --user and --password-file (a Super Administrator's login)");
            }
            if args.bootstrap_admin.is_some() {
                bail!("--bootstrap-admin is for --mode master only");
            }
        }
    }
    Ok(())
}

/// Reads a password file (without its final line break).
fn read_password(file: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        bail!(
            "{} is empty: it must hold a password (or, for a bootstrap, its argon2 hash)",
            file.display()
        );
    }
    Ok(secret.to_owned())
}

fn proxy_config(args: &ConfservArgs, name: &str, advertise: &str) -> anyhow::Result<ProxyConfig> {
    let (Some(user), Some(file)) = (&args.user, &args.password_file) else {
        bail!("--mode proxy needs --user and --password-file");
    };
    let mut config = ProxyConfig::new(name, advertise, args.masters.clone(), user, &read_password(file)?);
    config.tls = args.tls.clone();
    config.heartbeat_interval = Duration::from_millis(args.heartbeat_interval_ms);
    config.heartbeat_timeout = Duration::from_millis(args.heartbeat_timeout_ms);
    if args.heartbeat_timeout_ms <= args.heartbeat_interval_ms {
        bail!("--heartbeat-timeout-ms must be longer than --heartbeat-interval-ms");
    }
    config.tenants = args.tenants.clone();
    config.history_max_records = args.history_max_records;
    config.history_max_age_ms = history_max_age_ms(args);
    config.session_ttl_ms = args.session_ttl_ms;
    config.request_bytes_max = args.request_bytes_max;
    Ok(config)
}

fn history_max_age_ms(args: &ConfservArgs) -> u64 {
    args.history_max_age_ms
        .unwrap_or(args.history_days.saturating_mul(24 * 3600 * 1000))
}

/// Binds `addr` for `what`; returns the listener and the address it is bound to.
async fn bind(addr: &str, what: &str) -> anyhow::Result<(tokio::net::TcpListener, String)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for {what}"))?;
    let bound = listener
        .local_addr()
        .with_context(|| format!("cannot read the address bound for {what}"))?;
    Ok((listener, bound.to_string()))
}

/// Writes `lines` to the ready file, atomically, so a reader never sees half of it.
fn write_ready_file(path: &std::path::Path, lines: &[String]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let text: String = lines.iter().map(|line| format!("{line}\n")).collect();
    std::fs::write(&tmp, text).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))
}

pub async fn run(args: ConfservArgs) -> anyhow::Result<()> {
    check_mode_flags(&args)?;
    let (listener, bound) = bind(&args.listen, "clients").await?;
    let mut ready = vec![bound.clone()];
    let metrics = match &args.metrics_listen {
        Some(addr) => {
            let (listener, bound) = bind(addr, "metrics").await?;
            tracing::info!(addr = bound, "serving Prometheus metrics at /metrics");
            ready.push(bound);
            Some(listener)
        }
        None => None,
    };
    let listeners = Listeners { api: listener, metrics };
    let advertise = args.advertise.clone().unwrap_or(bound.clone());
    let name = args.name.clone().unwrap_or(advertise.clone());
    let proxy = match args.mode {
        ConfservMode::Proxy => Some(proxy_config(&args, &name, &advertise)?),
        ConfservMode::Master => None,
    };
    let mut config = ServerConfig::new(&name, &advertise, args.db_endpoints.clone());
    config.db_tls = args.tls.clone();
    config.tls = args.tls.clone();
    config.lease_ttl_ms = args.lease_ttl_ms;
    config.history_max_records = args.history_max_records;
    config.history_max_age_ms = history_max_age_ms(&args);
    config.log_keep_records = args.log_keep_records;
    config.retention_interval = Duration::from_millis(args.retention_interval_ms.max(10));
    if proxy.is_none() {
        config.bootstrap = bootstrap(&args)?;
    }
    config.session_ttl_ms = args.session_ttl_ms;
    config.request_bytes_max = args.request_bytes_max;
    if let Some(path) = &args.ready_file {
        write_ready_file(path, &ready)?;
    }
    match proxy {
        Some(proxy) => tandem_confserv::serve_proxy(proxy, listeners, crate::db::shutdown_signal())
            .await
            .with_context(|| format!("configuration server proxy {name}")),
        None => tandem_confserv::serve(config, listeners, crate::db::shutdown_signal())
            .await
            .with_context(|| format!("configuration server {name}")),
    }
}
