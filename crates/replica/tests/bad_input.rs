//! Bad input: malformed, oversized and invalid requests, garbage on the socket and peer messages
//! of another replica set each get a clear refusal, and the replica keeps serving; a data
//! directory that is corrupt, foreign or of an unknown format is refused at start, untouched.

mod common;

use std::io::Write;
use std::path::Path;

use common::{start_set, TestReplica};
use tandem_client::{ClientError, Txn};
use tandem_proto::db::raft_client::RaftClient;
use tandem_proto::db::{error_code, RaftRequest, EPOCH_KEY, ERROR_CODE_KEY};
use tandem_replica::StartError;
use tandem_store::OpenError;
use tandem_tls::TlsFiles;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::Code;

/// A codec that sends raw bytes as a gRPC message body, to put malformed protobuf on the wire.
#[derive(Default)]
struct RawCodec;

struct RawEncoder;
struct RawDecoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawDecoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Vec<u8>>, tonic::Status> {
        use bytes::Buf;
        let mut out = vec![0; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;
    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }
    fn decoder(&mut self) -> RawDecoder {
        RawDecoder
    }
}

async fn raw_call(addr: &str, path: &'static str, body: Vec<u8>) -> Result<Vec<u8>, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = tonic::codegen::http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

fn no_tls(_: u64) -> TlsFiles {
    TlsFiles::default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_refused_and_the_replica_keeps_serving() {
    let root = tempfile::tempdir().expect("tempdir");
    let (mut replicas, client) = start_set(3, root.path(), no_tls).await;
    let primary = client.discover().await.expect("primary");
    client.put("ok/before", "1").await.expect("put");

    eprintln!("--- malformed protobuf");
    let garbage = vec![0xff, 0xff, 0xff, 0xff, 0x0f, 0x12];
    let status = raw_call(&primary, "/tandem.db.v1.Kv/Txn", garbage)
        .await
        .expect_err("malformed must fail");
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(
        status.message().contains("decode"),
        "names the decoding failure: {status:?}"
    );

    eprintln!("--- oversized request (over the 4 MiB limit)");
    let big = vec![b'x'; 5 * 1024 * 1024];
    let err = client.put("ok/big", big).await.expect_err("oversized must fail");
    assert!(
        matches!(&err, ClientError::Refused(s) if s.code() == Code::OutOfRange || s.code() == Code::ResourceExhausted),
        "oversized request: {err:?}"
    );

    eprintln!("--- value over the 1 MiB limit, empty key, duplicate key, too many ops");
    let cases: Vec<(Txn, &str)> = vec![
        (Txn::new().put("ok/large", vec![0u8; 1024 * 1024 + 1]), "limit"),
        (Txn::new().put("", "x"), "empty key"),
        (Txn::new().put("dup", "1").put("dup", "2"), "twice"),
        (
            (0..1100).fold(Txn::new(), |t, i| t.put(format!("many/{i}"), "x")),
            "limit",
        ),
        (Txn::new().compare("k".repeat(5000), 0).put("k", "x"), "limit"),
    ];
    for (txn, needle) in cases {
        match client.txn(txn).await {
            Err(ClientError::Refused(status)) => {
                assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
                assert!(
                    status.message().contains(needle),
                    "message {:?} should mention {needle:?}",
                    status.message()
                );
            }
            other => panic!("expected an invalid-argument refusal mentioning {needle:?}, got {other:?}"),
        }
    }
    assert!(
        client.range("many/", None).await.expect("range").is_empty(),
        "nothing partial was written"
    );

    eprintln!("--- lease with an out-of-range TTL");
    let err = client.lease_grant("l", "me", 1).await.expect_err("ttl 1 ms is refused");
    assert!(
        matches!(&err, ClientError::Refused(s) if s.code() == Code::InvalidArgument),
        "{err:?}"
    );

    eprintln!("--- garbage bytes on the socket");
    {
        let mut socket = std::net::TcpStream::connect(&primary).expect("connect");
        socket
            .write_all(b"GET / HTTP/1.0\r\n\r\nthis is not http/2 at all\x00\x01\x02")
            .expect("write garbage");
    }

    eprintln!("--- a peer message from another replica set");
    let mut raft = RaftClient::connect(format!("http://{primary}"))
        .await
        .expect("connect raft");
    let foreign = RaftRequest {
        cluster: "someone-else".into(),
        epoch: 1,
        from: 9,
        to: 1,
        payload: vec![1, 2, 3],
        ..Default::default()
    };
    let status = raft.vote(foreign.clone()).await.expect_err("foreign cluster refused");
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert_eq!(
        status.metadata().get(ERROR_CODE_KEY).and_then(|v| v.to_str().ok()),
        Some(error_code::WRONG_CLUSTER)
    );

    eprintln!("--- a peer message of our set with an undecodable payload");
    let status = client.status(&primary).await.expect("status");
    let ours = RaftRequest {
        cluster: "test".into(),
        epoch: status.epoch,
        from: 2,
        to: status.id,
        payload: vec![0xde, 0xad],
        ..Default::default()
    };
    let status = raft
        .append_entries(ours.clone())
        .await
        .expect_err("undecodable refused");
    assert_eq!(status.code(), Code::InvalidArgument);

    eprintln!("--- the same two on one append stream: each refused in a reply, in order, the stream going on");
    let foreign_on_stream = RaftRequest { seq: 1, ..foreign };
    let ours_on_stream = RaftRequest { seq: 2, ..ours };
    let requests = futures::stream::iter([foreign_on_stream, ours_on_stream]);
    let mut replies = raft.append_stream(requests).await.expect("stream opened").into_inner();
    let first = replies.message().await.expect("first reply").expect("a reply");
    assert_eq!(first.seq, 1);
    assert!(first.payload.is_empty());
    let refusal = first.refusal.expect("foreign cluster refused");
    assert_eq!(refusal.code, Code::FailedPrecondition as i32);
    assert_eq!(
        refusal.metadata.get(ERROR_CODE_KEY).map(String::as_str),
        Some(error_code::WRONG_CLUSTER)
    );
    assert!(
        refusal.metadata.contains_key(EPOCH_KEY),
        "the refusal carries the epoch: {refusal:?}"
    );
    let second = replies.message().await.expect("second reply").expect("a reply");
    assert_eq!(second.seq, 2);
    assert_eq!(
        second.refusal.expect("undecodable refused").code,
        Code::InvalidArgument as i32
    );
    assert!(
        replies.message().await.expect("clean end").is_none(),
        "the stream ends when its requests do"
    );

    eprintln!("--- the replica set still serves");
    client.put("ok/after", "2").await.expect("put after bad input");
    assert_eq!(
        client.get("ok/before").await.expect("get").map(|kv| kv.value),
        Some(b"1".to_vec())
    );
    assert_eq!(
        client.get("ok/after").await.expect("get").map(|kv| kv.value),
        Some(b"2".to_vec())
    );

    for replica in &mut replicas {
        replica.stop().await;
    }
}

/// A digest of what the directory holds: for each SQLite file its logical content (every row of
/// every table), for other files their bytes. WAL side files are left out: SQLite may checkpoint
/// a WAL into its database when a connection closes, which moves bytes without changing content.
fn snapshot_of(dir: &Path) -> Vec<(String, u64)> {
    use std::hash::{Hash, Hasher};
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read dir") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_string_lossy().into_owned();
        if name.ends_with("-wal") || name.ends_with("-shm") {
            continue;
        }
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        match rusqlite::Connection::open_with_flags(&path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
            .and_then(|conn| logical_dump(&conn))
        {
            Ok(dump) if name.ends_with(".db") => dump.hash(&mut hasher),
            _ => std::fs::read(&path).expect("read file").hash(&mut hasher),
        }
        files.push((name, hasher.finish()));
    }
    files.sort();
    files
}

fn logical_dump(conn: &rusqlite::Connection) -> rusqlite::Result<String> {
    let mut out = String::new();
    let mut tables = conn.prepare("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")?;
    let names: Vec<String> = tables.query_map([], |row| row.get(0))?.collect::<Result<_, _>>()?;
    for table in names {
        let mut rows = conn.prepare(&format!("SELECT * FROM \"{table}\""))?;
        let columns = rows.column_count();
        let mut cursor = rows.query([])?;
        while let Some(row) = cursor.next()? {
            out.push_str(&table);
            for i in 0..columns {
                out.push_str(&format!("|{:?}", row.get_ref(i)?));
            }
            out.push('\n');
        }
    }
    Ok(out)
}

async fn start_error(dir: &Path, cluster: &str) -> StartError {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let config = tandem_replica::ReplicaConfig::new(1, cluster, dir.to_owned(), addr);
    tandem_replica::serve(config, listener, std::future::pending())
        .await
        .expect_err("start must be refused")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_data_directories_are_refused_untouched() {
    let root = tempfile::tempdir().expect("tempdir");

    eprintln!("--- a replica of cluster `test` writes some data and stops");
    let dir = root.path().join("r1");
    let mut replica = TestReplica::start(1, dir.clone(), TlsFiles::default()).await;
    replica.stop().await;
    let before = snapshot_of(&dir);

    eprintln!("--- started as another cluster: refused, naming the file");
    let err = start_error(&dir, "other").await;
    let text = err.to_string();
    assert!(
        matches!(err, StartError::DataDir(OpenError::OtherCluster { .. })),
        "{text}"
    );
    assert!(
        text.contains("log.db") && text.contains("other"),
        "names file and cluster: {text}"
    );
    assert_eq!(snapshot_of(&dir), before, "nothing in the directory changed");

    eprintln!("--- unknown format version: refused");
    let log = dir.join("log.db");
    {
        let conn = rusqlite::Connection::open(&log).expect("open log.db");
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'format_version'", [])
            .expect("bump format");
    }
    let tampered = snapshot_of(&dir);
    let err = start_error(&dir, "test").await;
    assert!(
        matches!(err, StartError::DataDir(OpenError::UnknownFormat { found: 99, .. })),
        "{err}"
    );
    assert!(err.to_string().contains("log.db"), "{err}");
    assert_eq!(snapshot_of(&dir), tampered, "nothing in the directory changed");

    eprintln!("--- corrupt file: refused");
    let corrupt_dir = root.path().join("corrupt");
    std::fs::create_dir_all(&corrupt_dir).expect("mkdir");
    std::fs::write(
        corrupt_dir.join("log.db"),
        b"this is not a sqlite database, just bytes".repeat(200),
    )
    .expect("write");
    let before = snapshot_of(&corrupt_dir);
    let err = start_error(&corrupt_dir, "test").await;
    assert!(matches!(err, StartError::DataDir(OpenError::Corrupt { .. })), "{err}");
    assert!(err.to_string().contains("log.db"), "{err}");
    assert_eq!(
        snapshot_of(&corrupt_dir),
        before,
        "the corrupt file was not wiped or re-initialised"
    );
}
