//! [`serve`]: one master Configuration Server, and [`serve_proxy`]: one Configuration Server
//! Proxy, each with its listeners ([`Listeners`]: the gRPC API and, optionally, the metrics) and
//! shutdown injected.

use std::future::Future;
use std::time::Duration;

use tandem_proto::confserv::conf_serv_server::ConfServServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{info, warn};

use crate::metrics;
use crate::node::{Node, ServerConfig};
use crate::proxy::{Proxy, ProxyConfig};
use crate::service::Service;

/// How often the server pings an idle client connection, and how long it waits for the answer
/// before closing it.
const SERVER_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
const SERVER_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a server could not run.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The database client could not be set up.
    #[error("database client: {0}")]
    Client(#[from] tandem_client::ClientError),
    /// TLS settings are unusable.
    #[error("TLS: {0}")]
    Tls(#[from] tandem_tls::TlsError),
    /// The gRPC server failed.
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
}

/// Where a server listens.
#[derive(Debug)]
pub struct Listeners {
    /// The `ConfServ` gRPC API.
    pub api: TcpListener,
    /// Prometheus metrics over HTTP (`GET /metrics`), when wanted.
    pub metrics: Option<TcpListener>,
}

impl From<TcpListener> for Listeners {
    /// The API alone, without metrics.
    fn from(api: TcpListener) -> Listeners {
        Listeners { api, metrics: None }
    }
}

/// The largest answer sent (a proxy's snapshot is one answer).
const REPLY_BYTES_MAX: usize = 256 * 1024 * 1024;

/// How long a graceful stop waits for the lease to be released.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves on `listeners` until `shutdown` completes; then ends subscriptions, releases the lease
/// if held, and returns.
pub async fn serve(
    config: ServerConfig,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = config.tls.server()?;
    let request_bytes_max = config.request_bytes_max;
    let node = Node::new(config)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let writer = tokio::spawn(node.clone().write_loop(stop_rx.clone()));
    let follower = tokio::spawn(node.clone().follow(stop_rx.clone()));
    let office = tokio::spawn(node.clone().hold_office(stop_rx.clone()));
    let retention = tokio::spawn(node.clone().retain(stop_rx.clone()));
    info!(
        name = node.config.name,
        addr = node.config.advertise,
        lease_ttl_ms = node.config.lease_ttl_ms,
        "configuration server (master) serving"
    );
    let service = Service::new(node.clone(), stop_rx.clone());
    let result = run(service, request_bytes_max, tls, listeners, shutdown, stop_tx.clone()).await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(RELEASE_TIMEOUT, office).await {
        Ok(_) => {}
        Err(_) => warn!("the master lease was not released in time; it expires by itself"),
    }
    follower.abort();
    retention.abort();
    writer.abort();
    result
}

/// Serves a Configuration Server Proxy on `listeners` until `shutdown` completes; then ends
/// subscriptions and returns.
pub async fn serve_proxy(
    config: ProxyConfig,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let tls = config.tls.server()?;
    let request_bytes_max = config.request_bytes_max;
    let proxy = Proxy::new(config)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let follower = tokio::spawn(proxy.clone().follow(stop_rx.clone()));
    info!(
        name = proxy.config.name,
        addr = proxy.config.advertise,
        masters = ?proxy.config.masters,
        heartbeat_interval_ms = proxy.config.heartbeat_interval.as_millis() as u64,
        heartbeat_timeout_ms = proxy.config.heartbeat_timeout.as_millis() as u64,
        "configuration server proxy serving"
    );
    let service = Service::proxy(proxy, stop_rx.clone());
    let result = run(service, request_bytes_max, tls, listeners, shutdown, stop_tx.clone()).await;
    let _ = stop_tx.send(true);
    follower.abort();
    result
}

/// Runs the gRPC server of `service` (and its metrics, when listened for) until `shutdown`,
/// which also tells the server's tasks to stop (`stop`).
async fn run(
    service: Service,
    request_bytes_max: usize,
    tls: Option<tonic::transport::ServerTlsConfig>,
    listeners: impl Into<Listeners>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    stop: watch::Sender<bool>,
) -> Result<(), ServeError> {
    let listeners = listeners.into();
    if let Some(listener) = listeners.metrics {
        let source = service.metrics_source();
        let mut stopped = stop.subscribe();
        let until_stopped = async move {
            let _ = stopped.wait_for(|s| *s).await;
        };
        tokio::spawn(async move {
            // The metrics are an aid: their failure is logged and never stops the server.
            if let Err(e) = metrics::serve(source, listener, until_stopped).await {
                warn!(error = %e, "the metrics server failed; /metrics is no longer served");
            }
        });
    }
    let service = ConfServServer::new(service)
        .max_decoding_message_size(request_bytes_max)
        .max_encoding_message_size(REPLY_BYTES_MAX);
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Clients ping every second to notice a dead server; this end only needs to free what a
        // vanished client held, and pinging thousands of idle clients every second costs CPU.
        .http2_keepalive_interval(Some(SERVER_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(SERVER_KEEPALIVE_TIMEOUT));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listeners.api), async move {
            shutdown.await;
            info!("stopping: ending subscriptions");
            let _ = stop.send(true);
        })
        .await?;
    Ok(())
}
