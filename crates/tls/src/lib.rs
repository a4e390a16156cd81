//! TLS for every gRPC link of Tandem: certificate, key and CA files in, tonic (rustls) server and
//! client settings out.
//!
//! Server side: a certificate and key are required; with a CA the server also demands a client
//! certificate signed by it (mutual TLS, as between replicas). Client side: the CA is required to
//! check the server; a certificate and key, when given, are presented to the server.
//!
//! Architecture invariant: no TLS code of our own — loading PEM files and handing them to tonic's
//! rustls integration is all this crate does.

use std::path::{Path, PathBuf};

use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Why TLS settings could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} file {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Incomplete(&'static str),
}

/// TLS files as given on a command line (every `tandem` role takes the same three flags).
#[derive(Debug, Clone, Default, clap::Args, serde::Deserialize)]
pub struct TlsFiles {
    /// PEM certificate this process presents (server certificate, and client certificate on
    /// outgoing links).
    #[arg(id = "tls_cert", long = "tls-cert", value_name = "FILE", requires = "tls_key")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(id = "tls_key", long = "tls-key", value_name = "FILE", requires = "tls_cert")]
    pub key: Option<PathBuf>,
    /// PEM CA certificate used to check peers (and, on servers, to demand client certificates).
    #[arg(id = "tls_ca", long = "tls-ca", value_name = "FILE")]
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    /// Whether any TLS file was given (then links use `https`).
    pub fn enabled(&self) -> bool {
        self.cert.is_some() || self.ca.is_some()
    }

    /// The URI scheme links use.
    pub fn scheme(&self) -> &'static str {
        if self.enabled() {
            "https"
        } else {
            "http"
        }
    }

    /// Server settings, or `None` when TLS is off.
    pub fn server(&self) -> Result<Option<ServerTlsConfig>, TlsError> {
        if !self.enabled() {
            return Ok(None);
        }
        let identity = self
            .identity()?
            .ok_or(TlsError::Incomplete("a TLS server needs --tls-cert and --tls-key"))?;
        let mut config = ServerTlsConfig::new().identity(identity);
        if let Some(ca) = &self.ca {
            config = config.client_ca_root(Certificate::from_pem(read(ca, "CA")?));
        }
        Ok(Some(config))
    }

    /// Client settings, or `None` when TLS is off.
    pub fn client(&self) -> Result<Option<ClientTlsConfig>, TlsError> {
        if !self.enabled() {
            return Ok(None);
        }
        let ca = self
            .ca
            .as_ref()
            .ok_or(TlsError::Incomplete("a TLS client needs --tls-ca to check the server"))?;
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca, "CA")?));
        if let Some(identity) = self.identity()? {
            config = config.identity(identity);
        }
        Ok(Some(config))
    }

    fn identity(&self) -> Result<Option<Identity>, TlsError> {
        match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => Ok(Some(Identity::from_pem(read(cert, "certificate")?, read(key, "key")?))),
            (None, None) => Ok(None),
            _ => Err(TlsError::Incomplete("--tls-cert and --tls-key go together")),
        }
    }
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Lazy gRPC channels to peers, shared by every link of a process (replica to replica, client to
/// server). Every channel has the same settings: a short connect timeout, no Nagle, and HTTP/2
/// keep-alives so that a dead peer is noticed without waiting on TCP.
///
/// Each address gets one connection unless [`ChannelCache::with_connections`] allows more: one
/// HTTP/2 connection's frames are read and written by one task at each end, so a caller with
/// many calls in flight spreads them over a few connections ([`ChannelCache::channel_for_load`]),
/// while a quiet one keeps to one.
#[derive(Clone)]
pub struct ChannelCache {
    /// TLS settings of outgoing links (`None`: plain `http`).
    tls: Option<tonic::transport::ClientTlsConfig>,
    /// Connections per address at most (at least 1).
    connections: usize,
    /// Channels by `host:port`, `connections` of each (connected on first use).
    channels: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<String, Vec<tonic::transport::Channel>>>>,
    /// Which of an address's channels the next spread call takes.
    next: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

/// Calls in flight per connection before [`ChannelCache::channel_for_load`] opens the next one.
pub const CALLS_PER_CONNECTION: usize = 32;

impl Default for ChannelCache {
    fn default() -> Self {
        ChannelCache::new(None)
    }
}

impl ChannelCache {
    pub fn new(tls: Option<ClientTlsConfig>) -> Self {
        ChannelCache {
            tls,
            connections: 1,
            channels: Default::default(),
            next: Default::default(),
        }
    }

    /// The same, with up to `connections` connections per address (at least one).
    pub fn with_connections(mut self, connections: usize) -> Self {
        self.connections = connections.max(1);
        self
    }

    /// The channel to `addr` (its first connection), created on first use (no connection is
    /// made here).
    pub fn channel(&self, addr: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        self.channel_for_load(addr, 0)
    }

    /// A channel to `addr` for a call made while the caller has `in_flight` calls waiting: the
    /// first connection while fewer than [`CALLS_PER_CONNECTION`] are, then the first two in
    /// turn, and so on up to the configured number.
    pub fn channel_for_load(
        &self,
        addr: &str,
        in_flight: usize,
    ) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        let spread = self.connections.min(1 + in_flight / CALLS_PER_CONNECTION);
        let turn = if spread == 1 {
            0
        } else {
            self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % spread
        };
        let mut channels = self.channels.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(pool) = channels.get(addr) {
            // A clone given another number of connections shares the pools made before it.
            return Ok(pool[turn % pool.len()].clone());
        }
        // Lazy channels: only the ones calls take ever connect.
        let pool = (0..self.connections)
            .map(|_| self.connect_lazy(addr))
            .collect::<Result<Vec<_>, _>>()?;
        let channel = pool[turn].clone();
        channels.insert(addr.to_owned(), pool);
        Ok(channel)
    }

    fn connect_lazy(&self, addr: &str) -> Result<tonic::transport::Channel, tonic::transport::Error> {
        use std::time::Duration;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(3));
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(endpoint.connect_lazy())
    }
}
