//! The WAN relay: a user-space TCP relay in the router namespace that delays the bytes of
//! cross-site connections (test machines often lack the `netem` qdisc, so delay cannot be a
//! qdisc).
//!
//! The router redirects a new TCP connection between two sites with a delay to the relay's
//! port (see [`crate::rules`]). The relay accepts it, reads the destination the client asked
//! for (`SO_ORIGINAL_DST`), and connects there itself *from the client site's gateway address*.
//! That choice keeps faults honest: the server answers to an address in the client's subnet, so
//! the router's drop rules — which look at source and destination subnets as sent — treat both
//! legs of a relayed connection exactly like a routed one, and a partition cuts established
//! relayed connections too.
//!
//! Each direction is a [`pump`]: a reader that stamps every chunk with the time it may be
//! delivered (arrival + the current one-way delay, never earlier than the chunk before) and
//! puts it in a bounded queue, and a writer that sends each chunk at its time. Reading goes on
//! while earlier chunks wait, so the delay does not cut throughput; order is kept; the end of
//! a direction (half-close) is delivered in its turn. When either side fails, both sides are
//! reset.
//!
//! Differences from a routed connection, inherent to a relay: the connecting side sees the
//! connection established before the destination is reached (a refused or unreachable
//! destination shows as a reset right after connecting, not as a refusal), and the server
//! sees the client site's gateway as its peer address.
//!
//! The relay runs on its own OS thread, which enters the router namespace and runs a
//! single-threaded tokio runtime, so every socket it makes lives in the router namespace.

use std::collections::BTreeMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::socket::{getsockopt, sockopt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::time::Instant;

use crate::layout::{gateway, site_of};
use crate::{sys, LabError};

/// Largest chunk read at once.
const CHUNK_BYTES: usize = 16 * 1024;
/// Chunks queued per direction at most (so at most 2 MiB in flight per direction): a reader
/// waits when the queue is full, and back-pressure reaches the sender.
const QUEUE_CHUNKS: usize = 128;
/// Relayed connections open at once at most; further connections wait in the listen backlog.
const CONNECTIONS_MAX: usize = 512;
/// Longest the relay tries to reach a destination before resetting the client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Pause after a failed accept (running out of descriptors, say) before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(20);

/// One-way delays by ordered pair of site numbers `(from, to)`, shared by the lab (which sets
/// them) and the relay (which reads them for every chunk).
#[derive(Debug, Default)]
pub struct DelayTable {
    delays: Mutex<BTreeMap<(u8, u8), Duration>>,
}

impl DelayTable {
    /// The one-way delay from site `from` to site `to` (zero when unset).
    pub fn get(&self, from: u8, to: u8) -> Duration {
        self.lock().get(&(from, to)).copied().unwrap_or(Duration::ZERO)
    }

    /// Sets the one-way delay from `from` to `to`; zero removes it.
    pub fn set(&self, from: u8, to: u8, delay: Duration) {
        let mut delays = self.lock();
        if delay.is_zero() {
            delays.remove(&(from, to));
        } else {
            delays.insert((from, to), delay);
        }
    }

    /// Every pair with a delay.
    pub fn pairs(&self) -> Vec<(u8, u8)> {
        self.lock().keys().copied().collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(u8, u8), Duration>> {
        // Single inserts and removes: a panic elsewhere cannot leave the map half-changed.
        self.delays.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The running relay. Dropping it stops the thread and closes every relayed connection.
pub struct Relay {
    /// The port the relay listens on in the router namespace (on every address).
    port: u16,
    /// Tells the relay's runtime to stop.
    stop: Option<oneshot::Sender<()>>,
    /// The relay's thread, joined on drop.
    thread: Option<JoinHandle<()>>,
}

impl Relay {
    /// Starts the relay in namespace `router_netns` and waits until it listens.
    pub fn start(router_netns: &str, delays: Arc<DelayTable>) -> Result<Relay, LabError> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<Result<u16, LabError>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let netns = router_netns.to_owned();
        let thread = std::thread::Builder::new()
            .name("netlab-relay".into())
            .spawn(move || run_thread(&netns, delays, ready_tx, stop_rx))
            .map_err(|source| LabError::Io {
                action: "start the relay thread".into(),
                source,
            })?;
        let mut relay = Relay {
            port: 0,
            stop: Some(stop_tx),
            thread: Some(thread),
        };
        match ready_rx.recv() {
            Ok(Ok(port)) => {
                relay.port = port;
                Ok(relay)
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(LabError::Relay("the relay thread ended before it listened".into())),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            if thread.join().is_err() {
                tracing::warn!("the relay thread panicked");
            }
        }
    }
}

/// The relay thread: enter the namespace, build the runtime, listen, serve until told to stop.
fn run_thread(
    netns: &str,
    delays: Arc<DelayTable>,
    ready: std::sync::mpsc::Sender<Result<u16, LabError>>,
    stop: oneshot::Receiver<()>,
) {
    if let Err(e) = sys::enter_netns(netns) {
        let _ = ready.send(Err(e));
        return;
    }
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(source) => {
            let _ = ready.send(Err(LabError::Io {
                action: "build the relay's runtime".into(),
                source,
            }));
            return;
        }
    };
    runtime.block_on(async move {
        let listener = match TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).await {
            Ok(listener) => listener,
            Err(source) => {
                let _ = ready.send(Err(LabError::Io {
                    action: "bind the relay's listener".into(),
                    source,
                }));
                return;
            }
        };
        let port = match listener.local_addr() {
            Ok(addr) => addr.port(),
            Err(source) => {
                let _ = ready.send(Err(LabError::Io {
                    action: "read the relay's port".into(),
                    source,
                }));
                return;
            }
        };
        let _ = ready.send(Ok(port));
        tokio::select! {
            _ = stop => {}
            _ = serve(listener, delays) => {}
        }
    });
    // Dropping the runtime cancels every connection task and closes their sockets.
}

/// Accepts redirected connections and relays each on a task of its own.
async fn serve(listener: TcpListener, delays: Arc<DelayTable>) {
    let slots = Arc::new(Semaphore::new(CONNECTIONS_MAX));
    loop {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        match listener.accept().await {
            Ok((client, peer)) => {
                let delays = delays.clone();
                tokio::spawn(async move {
                    if let Err(e) = relay_connection(client, peer, delays).await {
                        tracing::debug!(%peer, error = %e, "relayed connection ended with an error");
                    }
                    drop(slot);
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "the relay cannot accept a connection");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
    }
}

/// The destination a redirected connection was sent to.
fn original_destination(stream: &TcpStream) -> io::Result<SocketAddrV4> {
    let raw = getsockopt(stream, sockopt::OriginalDst).map_err(io::Error::from)?;
    Ok(SocketAddrV4::new(
        Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr)),
        u16::from_be(raw.sin_port),
    ))
}

/// Relays one connection until both directions have ended, or resets both sides when either
/// fails.
async fn relay_connection(mut client: TcpStream, peer: SocketAddr, delays: Arc<DelayTable>) -> io::Result<()> {
    let destination = match original_destination(&client) {
        Ok(destination) => destination,
        Err(e) => {
            reset(&client);
            return Err(e);
        }
    };
    let peer_ip = match peer {
        SocketAddr::V4(v4) => *v4.ip(),
        SocketAddr::V6(_) => Ipv4Addr::UNSPECIFIED,
    };
    let client_site = site_of(peer_ip);
    let server_site = site_of(*destination.ip());
    let mut upstream = match connect_from_site(client_site, destination).await {
        Ok(upstream) => upstream,
        Err(e) => {
            reset(&client);
            return Err(e);
        }
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let delay_of = |from: Option<u8>, to: Option<u8>| {
        let delays = delays.clone();
        move || match (from, to) {
            (Some(f), Some(t)) => delays.get(f, t),
            _ => Duration::ZERO,
        }
    };
    let result = {
        let (client_read, client_write) = client.split();
        let (upstream_read, upstream_write) = upstream.split();
        tokio::try_join!(
            pump(client_read, upstream_write, delay_of(client_site, server_site)),
            pump(upstream_read, client_write, delay_of(server_site, client_site)),
        )
    };
    if result.is_err() {
        reset(&client);
        reset(&upstream);
    }
    result.map(|_| ())
}

/// Connects to `destination` from the gateway address of the client's site (port chosen by
/// the kernel), within [`CONNECT_TIMEOUT`].
async fn connect_from_site(site: Option<u8>, destination: SocketAddrV4) -> io::Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(site) = site {
        socket.bind(SocketAddr::from((gateway(site), 0)))?;
    }
    match tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(destination.into())).await {
        Ok(connected) => connected,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no connection to {destination}"),
        )),
    }
}

/// Makes the next close of `stream` send a reset instead of an orderly end.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// One chunk in a direction's queue: its bytes (`None`: the end of the direction) and when it
/// may be delivered.
struct Timed {
    due: Instant,
    bytes: Option<Vec<u8>>,
}

/// Copies `from` to `to`, delivering every byte `delay()` after it was read, in order, then
/// shuts `to` down for writing when `from` ends. Returns the bytes copied.
pub async fn pump<R, W, D>(mut from: R, mut to: W, delay: D) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
    D: Fn() -> Duration,
{
    let (queue, mut queued) = mpsc::channel::<Timed>(QUEUE_CHUNKS);
    let reader = async move {
        let mut buffer = vec![0u8; CHUNK_BYTES];
        let mut last_due = Instant::now();
        loop {
            let n = from.read(&mut buffer).await?;
            // Never before the chunk ahead of it: a delay made shorter must not reorder bytes.
            let due = (Instant::now() + delay()).max(last_due);
            last_due = due;
            let bytes = (n > 0).then(|| buffer[..n].to_vec());
            let end = bytes.is_none();
            if queue.send(Timed { due, bytes }).await.is_err() {
                return Err(io::Error::new(io::ErrorKind::BrokenPipe, "the writer has stopped"));
            }
            if end {
                return Ok::<(), io::Error>(());
            }
        }
    };
    let writer = async move {
        let mut copied = 0u64;
        while let Some(chunk) = queued.recv().await {
            tokio::time::sleep_until(chunk.due).await;
            match chunk.bytes {
                Some(bytes) => {
                    to.write_all(&bytes).await?;
                    copied += bytes.len() as u64;
                }
                None => {
                    to.shutdown().await?;
                    return Ok::<u64, io::Error>(copied);
                }
            }
        }
        Err(io::Error::new(io::ErrorKind::BrokenPipe, "the reader has stopped"))
    };
    let ((), copied) = tokio::try_join!(reader, writer)?;
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pump_delays_every_byte_by_the_delay_and_keeps_reading_meanwhile() {
        let delay = Duration::from_millis(100);
        let (mut source, pump_in) = tokio::io::duplex(1024 * 1024);
        let (pump_out, mut sink) = tokio::io::duplex(1024 * 1024);
        let started = Instant::now();
        let task = tokio::spawn(pump(pump_in, pump_out, move || delay));
        // Ten writes 10 ms apart: if the pump slept per read, the last would arrive after
        // 10 × 100 ms; pipelined, it arrives 100 ms after it was written.
        for i in 0..10u8 {
            source.write_all(&[i; 100]).await.expect("write");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        drop(source);
        let mut received = Vec::new();
        sink.read_to_end(&mut received).await.expect("read");
        let elapsed = started.elapsed();
        assert_eq!(received.len(), 1000);
        for (i, chunk) in received.chunks(100).enumerate() {
            assert!(chunk.iter().all(|b| usize::from(*b) == i), "chunk {i} out of order");
        }
        assert!(
            elapsed >= Duration::from_millis(190),
            "delivered too early: {elapsed:?}"
        );
        assert!(
            elapsed < Duration::from_millis(250),
            "reading was serialised: {elapsed:?}"
        );
        assert_eq!(task.await.expect("join").expect("pump"), 1000);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pump_delivers_the_end_of_a_direction_after_its_bytes() {
        let delay = Duration::from_millis(50);
        let (mut source, pump_in) = tokio::io::duplex(1024);
        let (pump_out, mut sink) = tokio::io::duplex(1024);
        let task = tokio::spawn(pump(pump_in, pump_out, move || delay));
        source.write_all(b"last words").await.expect("write");
        source.shutdown().await.expect("half-close");
        let started = Instant::now();
        let mut received = Vec::new();
        sink.read_to_end(&mut received).await.expect("read");
        assert_eq!(received, b"last words");
        assert!(started.elapsed() >= delay);
        assert_eq!(task.await.expect("join").expect("pump"), 10);
    }

    #[tokio::test(start_paused = true)]
    async fn a_shorter_delay_never_reorders_bytes() {
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(200));
        let (mut source, pump_in) = tokio::io::duplex(1024);
        let (pump_out, mut sink) = tokio::io::duplex(1024);
        let d = delay_ms.clone();
        let task = tokio::spawn(pump(pump_in, pump_out, move || {
            Duration::from_millis(d.load(std::sync::atomic::Ordering::Relaxed))
        }));
        source.write_all(b"first ").await.expect("write");
        tokio::time::sleep(Duration::from_millis(1)).await;
        delay_ms.store(0, std::sync::atomic::Ordering::Relaxed);
        source.write_all(b"second").await.expect("write");
        drop(source);
        let mut received = Vec::new();
        sink.read_to_end(&mut received).await.expect("read");
        assert_eq!(received, b"first second");
        assert_eq!(task.await.expect("join").expect("pump"), 12);
    }

    #[test]
    fn delays_are_kept_per_direction() {
        let table = DelayTable::default();
        table.set(1, 2, Duration::from_millis(30));
        assert_eq!(table.get(1, 2), Duration::from_millis(30));
        assert_eq!(table.get(2, 1), Duration::ZERO);
        table.set(1, 2, Duration::ZERO);
        assert!(table.pairs().is_empty());
    }
}
