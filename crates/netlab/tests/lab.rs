//! The lab on real namespaces: reachability, partitions (both ways and one way), loss, a cut
//! cable, WAN delay through the relay, and cleanup. Every test builds its own lab (tests run in
//! parallel on threads; labs never collide) and is skipped loudly without root — a failure
//! under `CI=true`.
//!
//! Absence is checked by waiting a bounded time for something that must not happen (a reply,
//! a datagram); presence by awaiting the event itself.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tandem_netlab::{require_root, Host, Lab};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

/// How long something that must not arrive is waited for.
const SILENCE: Duration = Duration::from_millis(400);
/// Deadline for something that must arrive (generous: a wait ends when its event happens; a
/// healed connection may wait for TCP's next retransmission).
const EVENT: Duration = Duration::from_secs(15);

/// Two sites: `a1`, `a2` in site `one`, `b1` in site `two`.
struct Fixture {
    lab: Lab,
    a1: Host,
    a2: Host,
    b1: Host,
}

fn fixture(test: &str) -> Option<Fixture> {
    if !require_root(test) {
        return None;
    }
    let lab = Lab::new(test).expect("create the lab");
    lab.add_site("one").expect("site one");
    lab.add_site("two").expect("site two");
    let a1 = lab.add_host("one", "a1").expect("host a1");
    let a2 = lab.add_host("one", "a2").expect("host a2");
    let b1 = lab.add_host("two", "b1").expect("host b1");
    Some(Fixture { lab, a1, a2, b1 })
}

/// An echo server on `host` (echoes until the client half-closes, then closes its side too).
/// Returns its address and the peer address of every connection it accepts.
async fn echo_server(host: &Host) -> (SocketAddr, mpsc::UnboundedReceiver<SocketAddr>) {
    let listener = host.tokio_tcp_listen(0).expect("listen");
    let addr = listener.local_addr().expect("local address");
    let (peers_tx, peers) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, peer)) = listener.accept().await else {
                return;
            };
            let _ = peers_tx.send(peer);
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                if tokio::io::copy(&mut r, &mut w).await.is_ok() {
                    let _ = w.shutdown().await;
                }
            });
        }
    });
    (addr, peers)
}

async fn connect(from: &Host, to: SocketAddr) -> TcpStream {
    match tokio::time::timeout(EVENT, from.tokio_tcp_connect(to)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => panic!("{} cannot connect to {to}: {e}", from.name),
        Err(_) => panic!("{} did not connect to {to} within {EVENT:?}", from.name),
    }
}

/// Whether a connection attempt is still unanswered after `SILENCE`.
async fn connect_times_out(from: &Host, to: SocketAddr) -> bool {
    match tokio::time::timeout(SILENCE, from.tokio_tcp_connect(to)).await {
        Err(_) => true,
        Ok(Ok(_)) => false,
        Ok(Err(e)) => panic!("connecting {} to {to} failed instead of timing out: {e}", from.name),
    }
}

/// Sends `message` and waits (up to `wait`) for its echo; `None` when nothing came back.
async fn round_trip(stream: &mut TcpStream, message: &[u8], wait: Duration) -> Option<Duration> {
    let started = Instant::now();
    stream.write_all(message).await.expect("write");
    let mut echoed = vec![0u8; message.len()];
    match tokio::time::timeout(wait, stream.read_exact(&mut echoed)).await {
        Ok(Ok(_)) => {
            assert_eq!(echoed, message, "the echo differs");
            Some(started.elapsed())
        }
        Ok(Err(e)) => panic!("the connection failed: {e}"),
        Err(_) => None,
    }
}

/// Rest of an echo whose first part was not answered in time.
async fn finish_round_trip(stream: &mut TcpStream, message: &[u8]) {
    let mut echoed = vec![0u8; message.len()];
    match tokio::time::timeout(EVENT, stream.read_exact(&mut echoed)).await {
        Ok(Ok(_)) => assert_eq!(echoed, message),
        Ok(Err(e)) => panic!("the connection failed after the heal: {e}"),
        Err(_) => panic!("no echo within {EVENT:?} after the heal"),
    }
}

/// Sends datagrams from `from` to `to` every 20 ms until one arrives (`true`) or `wait` passes.
async fn datagram_arrives(from: &Host, to: &Host, wait: Duration) -> bool {
    let sender = tokio::net::UdpSocket::from_std(nonblocking(from.udp_bind(0).expect("bind"))).expect("udp sender");
    let receiver = tokio::net::UdpSocket::from_std(nonblocking(to.udp_bind(0).expect("bind"))).expect("udp receiver");
    let target = receiver.local_addr().expect("receiver address");
    let deadline = tokio::time::Instant::now() + wait;
    let mut ticks = tokio::time::interval(Duration::from_millis(20));
    let mut buf = [0u8; 16];
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(deadline) => return false,
            _ = ticks.tick() => { sender.send_to(b"hello", target).await.expect("send"); }
            got = receiver.recv_from(&mut buf) => {
                let (n, _) = got.expect("receive");
                assert_eq!(&buf[..n], b"hello");
                return true;
            }
        }
    }
}

fn nonblocking(socket: std::net::UdpSocket) -> std::net::UdpSocket {
    socket.set_nonblocking(true).expect("non-blocking");
    socket
}

#[tokio::test]
async fn t10_tcp_echo_works_within_and_across_sites() {
    let Some(f) = fixture("t10") else { return };
    tracing::info!("--- a server in each site");
    let (b1_echo, mut b1_peers) = echo_server(&f.b1).await;
    let (a2_echo, _) = echo_server(&f.a2).await;
    tracing::info!("--- across sites, routed");
    let mut across = connect(&f.a1, b1_echo).await;
    assert!(round_trip(&mut across, b"across", EVENT).await.is_some());
    let peer = b1_peers.recv().await.expect("a peer");
    assert_eq!(
        peer.ip(),
        f.a1.addr,
        "without a WAN delay the connection is routed, not relayed"
    );
    tracing::info!("--- within the site, bridged");
    let mut within = connect(&f.a1, a2_echo).await;
    assert!(round_trip(&mut within, b"within", EVENT).await.is_some());
    assert_eq!(
        f.lab.namespaces().len(),
        4,
        "router and three hosts: {:?}",
        f.lab.namespaces()
    );
}

#[test]
fn t15_a_future_run_on_a_host_acts_from_that_host() {
    let Some(f) = fixture("t15") else { return };
    let listener = f.b1.tcp_listen(0).expect("listen on b1");
    let server_addr = listener.local_addr().expect("address");
    let server = std::thread::spawn(move || -> std::io::Result<SocketAddr> {
        use std::io::{Read, Write};
        let (mut stream, peer) = listener.accept()?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf)?;
        stream.write_all(&buf)?;
        Ok(peer)
    });
    let echoed =
        f.a1.block_on(async move {
            // A plain connect: the runtime's thread is inside a1.
            let mut stream = TcpStream::connect(server_addr).await?;
            stream.write_all(b"ping").await?;
            let mut buf = [0u8; 4];
            stream.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(buf)
        })
        .expect("run on a1")
        .expect("echo");
    assert_eq!(&echoed, b"ping");
    let peer = server.join().expect("server thread").expect("server");
    assert_eq!(peer.ip(), f.a1.addr);
}

#[tokio::test]
async fn t20_a_partition_cuts_the_wan_but_not_a_site_and_heal_restores_it() {
    let Some(f) = fixture("t20") else { return };
    let (b1_echo, _) = echo_server(&f.b1).await;
    let (a2_echo, _) = echo_server(&f.a2).await;
    let mut established = connect(&f.a1, b1_echo).await;
    assert!(round_trip(&mut established, b"before", EVENT).await.is_some());

    tracing::info!("--- partition");
    f.lab.partition("one", "two").expect("partition");
    assert!(
        connect_times_out(&f.a1, b1_echo).await,
        "a new connection across the partition"
    );
    assert!(
        connect_times_out(&f.b1, f.a2.socket_addr(1)).await,
        "a connection the other way"
    );
    assert_eq!(
        round_trip(&mut established, b"during", SILENCE).await,
        None,
        "data crossed the partition"
    );
    let mut within = connect(&f.a1, a2_echo).await;
    assert!(
        round_trip(&mut within, b"same site", EVENT).await.is_some(),
        "the site itself is unaffected"
    );

    tracing::info!("--- heal");
    f.lab.heal().expect("heal");
    finish_round_trip(&mut established, b"during").await;
    let mut fresh = connect(&f.a1, b1_echo).await;
    assert!(round_trip(&mut fresh, b"after", EVENT).await.is_some());
}

#[tokio::test]
async fn t30_a_one_way_partition_drops_exactly_one_direction() {
    let Some(f) = fixture("t30") else { return };
    assert!(datagram_arrives(&f.a1, &f.b1, EVENT).await, "before the partition");
    f.lab.partition_oneway("one", "two").expect("partition one way");
    assert!(
        !datagram_arrives(&f.a1, &f.b1, SILENCE).await,
        "one → two must be dropped"
    );
    assert!(
        datagram_arrives(&f.b1, &f.a1, EVENT).await,
        "two → one must still arrive"
    );
    assert!(
        datagram_arrives(&f.a2, &f.a1, EVENT).await,
        "within site one nothing changes"
    );
    f.lab.heal().expect("heal");
    assert!(datagram_arrives(&f.a1, &f.b1, EVENT).await, "after the heal");
}

#[tokio::test]
async fn t40_loss_of_100_percent_blocks_and_0_restores() {
    let Some(f) = fixture("t40") else { return };
    let (b1_echo, _) = echo_server(&f.b1).await;
    f.lab.set_loss("one", "two", 100).expect("loss 100");
    assert!(!datagram_arrives(&f.a1, &f.b1, SILENCE).await, "one → two");
    assert!(!datagram_arrives(&f.b1, &f.a1, SILENCE).await, "two → one");
    assert!(connect_times_out(&f.a1, b1_echo).await);
    f.lab.set_loss("one", "two", 0).expect("loss 0");
    assert!(datagram_arrives(&f.a1, &f.b1, EVENT).await, "one → two restored");
    assert!(datagram_arrives(&f.b1, &f.a1, EVENT).await, "two → one restored");
    let mut stream = connect(&f.a1, b1_echo).await;
    assert!(round_trip(&mut stream, b"restored", EVENT).await.is_some());
    assert!(f.lab.set_loss("one", "two", 101).is_err(), "more than 100 % is refused");
}

#[tokio::test]
async fn t50_a_wan_delay_bounds_cross_site_round_trips_from_below_only() {
    let Some(f) = fixture("t50") else { return };
    let one_way = Duration::from_millis(100);
    let (b1_echo, mut b1_peers) = echo_server(&f.b1).await;
    let (a2_echo, _) = echo_server(&f.a2).await;
    f.lab.set_wan_delay("one", "two", one_way).expect("delay");

    tracing::info!("--- across sites: relayed and delayed both ways");
    let mut across = connect(&f.a1, b1_echo).await;
    for i in 0..3 {
        let rtt = round_trip(&mut across, format!("across {i}").as_bytes(), EVENT)
            .await
            .expect("an echo");
        assert!(
            rtt >= 2 * one_way,
            "a cross-site round trip took {rtt:?}, less than 2 × {one_way:?}"
        );
    }
    let peer = b1_peers.recv().await.expect("a peer");
    let gateway_one = f.lab.site("one").expect("site").gateway;
    assert_eq!(
        peer.ip(),
        gateway_one,
        "the relay connects from the client site's gateway"
    );

    tracing::info!("--- within a site: not delayed");
    let mut within = connect(&f.a1, a2_echo).await;
    let rtt = round_trip(&mut within, b"within", EVENT).await.expect("an echo");
    assert!(rtt < 2 * one_way, "an intra-site round trip took {rtt:?}");
}

#[tokio::test]
async fn t60_a_partition_cuts_an_established_relayed_connection() {
    let Some(f) = fixture("t60") else { return };
    let one_way = Duration::from_millis(20);
    f.lab.set_wan_delay("one", "two", one_way).expect("delay");
    let (b1_echo, mut b1_peers) = echo_server(&f.b1).await;
    let mut relayed = connect(&f.a1, b1_echo).await;
    assert!(round_trip(&mut relayed, b"before", EVENT).await.is_some());
    assert_eq!(
        b1_peers.recv().await.expect("a peer").ip(),
        f.lab.site("one").expect("site").gateway
    );

    tracing::info!("--- partition: the relayed connection goes silent");
    f.lab.partition("one", "two").expect("partition");
    assert_eq!(
        round_trip(&mut relayed, b"during", SILENCE).await,
        None,
        "data crossed the partition"
    );
    assert!(connect_times_out(&f.a1, b1_echo).await, "a new relayed connection");

    tracing::info!("--- heal: the data waiting in TCP arrives");
    f.lab.heal().expect("heal");
    finish_round_trip(&mut relayed, b"during").await;
}

#[tokio::test]
async fn t61_a_one_way_partition_cuts_one_direction_of_a_relayed_connection() {
    let Some(f) = fixture("t61") else { return };
    f.lab
        .set_wan_delay("one", "two", Duration::from_millis(10))
        .expect("delay");
    // b1 serves; a1 is the client. Data a1 → b1 crosses one → two.
    let listener = f.b1.tokio_tcp_listen(0).expect("listen");
    let server_addr = listener.local_addr().expect("address");
    let mut client = connect(&f.a1, server_addr).await;
    let (mut server, _) = tokio::time::timeout(EVENT, listener.accept())
        .await
        .expect("accepted in time")
        .expect("accept");

    f.lab.partition_oneway("one", "two").expect("partition one way");
    tracing::info!("--- two → one still flows");
    server.write_all(b"down").await.expect("write");
    let mut buf = [0u8; 4];
    tokio::time::timeout(EVENT, client.read_exact(&mut buf))
        .await
        .expect("two → one arrives in time")
        .expect("read");
    assert_eq!(&buf, b"down");
    tracing::info!("--- one → two is dropped");
    client.write_all(b"up").await.expect("write");
    let mut up = [0u8; 2];
    assert!(
        tokio::time::timeout(SILENCE, server.read_exact(&mut up)).await.is_err(),
        "one → two crossed a one-way partition"
    );
    f.lab.heal().expect("heal");
    tokio::time::timeout(EVENT, server.read_exact(&mut up))
        .await
        .expect("one → two arrives after the heal")
        .expect("read");
    assert_eq!(&up, b"up");
}

#[tokio::test]
async fn t70_the_relay_carries_a_half_close_and_the_answer_after_it() {
    let Some(f) = fixture("t70") else { return };
    f.lab
        .set_wan_delay("one", "two", Duration::from_millis(10))
        .expect("delay");
    let (b1_echo, _) = echo_server(&f.b1).await;
    let mut stream = connect(&f.a1, b1_echo).await;
    let request = vec![7u8; 300_000];
    stream.write_all(&request).await.expect("write");
    stream.shutdown().await.expect("half-close");
    let mut answer = Vec::new();
    tokio::time::timeout(EVENT, stream.read_to_end(&mut answer))
        .await
        .expect("the echo and its end in time")
        .expect("read");
    assert_eq!(answer.len(), request.len(), "every byte echoed, then the end");
    assert!(answer == request);
}

#[tokio::test]
async fn t71_a_refused_destination_resets_the_relayed_connection() {
    let Some(f) = fixture("t71") else { return };
    f.lab
        .set_wan_delay("one", "two", Duration::from_millis(10))
        .expect("delay");
    // Nothing listens on b1's port 1: the relay's connection is refused and the client reset —
    // while connecting, or right after.
    let mut stream = match tokio::time::timeout(EVENT, f.a1.tokio_tcp_connect(f.b1.socket_addr(1))).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset, "{e}");
            return;
        }
        Err(_) => panic!("connecting to a refused destination hung"),
    };
    let mut buf = [0u8; 1];
    match tokio::time::timeout(EVENT, stream.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => {}
        Ok(Ok(n)) => panic!("read {n} bytes from a refused destination"),
        Err(_) => panic!("the relayed connection to a refused destination stayed open"),
    }
}

#[tokio::test]
async fn t80_a_cut_host_is_unreachable_until_restored() {
    let Some(f) = fixture("t80") else { return };
    let (b1_echo, _) = echo_server(&f.b1).await;
    let (a2_echo, _) = echo_server(&f.a2).await;
    f.lab.cut_host(&f.a2).expect("cut");
    assert!(connect_times_out(&f.a1, a2_echo).await, "within the site");
    let mut across = connect(&f.a1, b1_echo).await;
    assert!(
        round_trip(&mut across, b"others", EVENT).await.is_some(),
        "other hosts are unaffected"
    );
    f.lab.restore_host(&f.a2).expect("restore");
    let mut again = connect(&f.a1, a2_echo).await;
    assert!(round_trip(&mut again, b"back", EVENT).await.is_some());
}

fn lab_namespaces_listed(prefix: &str) -> Vec<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(prefix))
        .map(str::to_owned)
        .collect()
}

#[test]
fn t90_dropping_a_lab_removes_its_namespaces_and_processes() {
    let Some(f) = fixture("t90") else { return };
    let prefix = f.lab.netns_prefix();
    assert_eq!(lab_namespaces_listed(&prefix).len(), 4);
    f.lab
        .set_wan_delay("one", "two", Duration::from_millis(5))
        .expect("relay started");
    let mut sleeper = f.b1.command("sleep").arg("600").spawn().expect("spawn in b1");
    let Fixture { lab, .. } = f;
    drop(lab);
    assert_eq!(lab_namespaces_listed(&prefix), Vec::<String>::new());
    let status = sleeper.wait().expect("reap");
    assert!(!status.success(), "the process in the lab was killed: {status}");
}

#[test]
fn t91_a_panic_inside_a_test_still_removes_the_lab() {
    if !require_root("t91") {
        return;
    }
    let prefix = std::sync::Mutex::new(String::new());
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let lab = Lab::new("t91").expect("lab");
        lab.add_site("one").expect("site");
        lab.add_host("one", "h").expect("host");
        *prefix.lock().expect("lock") = lab.netns_prefix();
        assert_eq!(lab_namespaces_listed(&lab.netns_prefix()).len(), 2);
        panic!("a test failing while its lab exists");
    }));
    assert!(outcome.is_err());
    let prefix = prefix.into_inner().expect("lock");
    assert!(!prefix.is_empty());
    assert_eq!(lab_namespaces_listed(&prefix), Vec::<String>::new());
}

#[test]
fn t92_a_new_lab_removes_leftovers_of_dead_processes() {
    if !require_root("t92") {
        return;
    }
    // A process id that no longer exists: a child that has exited and been reaped.
    let mut child = std::process::Command::new("true").spawn().expect("spawn");
    let dead = child.id();
    child.wait().expect("reap");
    let leftover = format!("tdm{dead}x0-r");
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &leftover])
        .status()
        .expect("ip netns add");
    assert!(status.success());
    let lab = Lab::new("t92").expect("lab");
    assert_eq!(
        lab_namespaces_listed(&leftover),
        Vec::<String>::new(),
        "the leftover is gone"
    );
    assert_eq!(
        lab_namespaces_listed(&lab.netns_prefix()).len(),
        1,
        "the new lab is whole"
    );
}

#[test]
fn t93_names_and_sites_are_checked() {
    let Some(f) = fixture("t93") else { return };
    assert!(f.lab.add_site("one").is_err(), "a second site named one");
    assert!(f.lab.add_host("one", "a1").is_err(), "a second host named a1");
    assert!(f.lab.add_host("nowhere", "x").is_err());
    assert!(f.lab.add_host("one", "bad name").is_err());
    assert!(f.lab.partition("one", "one").is_err());
    assert!(f.lab.partition("one", "nowhere").is_err());
    // A failed host leaves nothing behind and the name stays free.
    assert_eq!(f.lab.namespaces().len(), 4);
    let a3 = f.lab.add_host("one", "a3").expect("a third host");
    assert_eq!(a3.addr, std::net::Ipv4Addr::new(10, 77, 1, 12));
}
