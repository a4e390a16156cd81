//! [`serve`]: one master Configuration Server, with its listener and shutdown injected.

use std::future::Future;
use std::time::Duration;

use tandem_proto::confserv::conf_serv_server::ConfServServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tracing::{info, warn};

use crate::node::{Node, ServerConfig};
use crate::service::Service;

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

/// How long a graceful stop waits for the lease to be released.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(3);

/// Serves on `listener` until `shutdown` completes; then ends subscriptions, releases the lease
/// if held, and returns.
pub async fn serve(
    config: ServerConfig,
    listener: TcpListener,
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

    let service = ConfServServer::new(Service::new(node.clone(), stop_rx.clone()))
        .max_decoding_message_size(request_bytes_max)
        .max_encoding_message_size(64 * 1024 * 1024);
    let mut builder = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(1)))
        .http2_keepalive_timeout(Some(Duration::from_secs(3)));
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    let stopping = stop_tx.clone();
    let result = builder
        .add_service(service)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
            shutdown.await;
            info!("stopping: ending subscriptions and releasing the master lease");
            let _ = stopping.send(true);
        })
        .await;
    let _ = stop_tx.send(true);
    match tokio::time::timeout(RELEASE_TIMEOUT, office).await {
        Ok(_) => {}
        Err(_) => warn!("the master lease was not released in time; it expires by itself"),
    }
    follower.abort();
    retention.abort();
    writer.abort();
    result?;
    Ok(())
}
