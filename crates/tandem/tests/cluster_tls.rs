//! The binary with mutual TLS: replicas started with `--tls-cert/--tls-key/--tls-ca` form a set,
//! replicate and fail over over TLS; the command line talks TLS with the same flags; a client
//! without TLS gets nothing.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use tandem_client::{Client, ClientOptions};
use tandem_testkit::{init_tracing, Cluster, ClusterOptions, Kind, TlsPaths};
use tracing::info;

use common::TANDEM;

/// Writes a CA and one loopback certificate signed by it (for servers and clients alike) into
/// `dir`.
fn generate_tls(dir: &Path) -> TlsPaths {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "tandem cluster test CA");
    let ca_key = KeyPair::generate().expect("CA key");
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-signed CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf parameters");
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, &issuer).expect("signed leaf");

    let paths = TlsPaths {
        cert: dir.join("replica.pem"),
        key: dir.join("replica.key"),
        ca: dir.join("ca.pem"),
    };
    std::fs::write(&paths.cert, cert.pem()).expect("write the certificate");
    std::fs::write(&paths.key, key.serialize_pem()).expect("write the key");
    std::fs::write(&paths.ca, ca_cert.pem()).expect("write the CA");
    paths
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_set_of_processes_runs_with_mutual_tls() {
    init_tracing();
    let tls_dir = tempfile::tempdir().expect("temporary directory");
    let tls = generate_tls(tls_dir.path());

    info!("--- three sync replicas with mutual TLS (available mode, so that failover can write)");
    let options = ClusterOptions::default()
        .tls(tls)
        .sync_mode("available")
        .sync_timeout_ms(1000);
    let mut cluster = Cluster::must_start(TANDEM, &[Kind::Sync, Kind::Sync, Kind::Sync], options).await;

    info!("--- writes and reads over TLS reach every replica");
    for i in 0..20 {
        cluster.must_put(&format!("tls/{i:02}"), &format!("v{i}")).await;
    }
    let state = cluster.must_range("tls/").await;
    assert_eq!(state.len(), 20);
    cluster.must_wait_caught_up(&[1, 2, 3]).await;
    for id in [1, 2, 3] {
        assert_eq!(cluster.must_range_on(id, "tls/").await, state, "replica {id}");
    }

    info!("--- the command line speaks TLS with the same flags");
    let status = cluster.must_cli(&["status", "--json"]).await;
    let status: serde_json::Value = serde_json::from_str(&status).expect("status --json prints JSON");
    let primaries = status
        .as_array()
        .expect("an array")
        .iter()
        .filter(|e| e["status"]["role"] == "primary")
        .count();
    assert_eq!(primaries, 1, "{status}");

    info!("--- a client without TLS gets nothing");
    let plain = ClientOptions {
        deadline: Duration::from_secs(2),
        ..ClientOptions::default()
    };
    let plain = Client::new(cluster.endpoints(), plain).expect("plain client");
    let answer = plain.get("tls/00").await;
    assert!(answer.is_err(), "a plaintext client was served: {answer:?}");

    info!("--- the primary dies; a new one is elected over TLS and takes writes");
    let primary = cluster.must_wait_primary().await;
    cluster.must_kill9(primary);
    let new_primary = cluster.must_wait_primary().await;
    assert_ne!(new_primary, primary);
    cluster.must_put("tls/after-failover", "ok").await;
    cluster.must_restart(primary).await;
    cluster.must_wait_caught_up(&[primary]).await;
    assert_eq!(cluster.must_range_on(primary, "tls/").await.len(), 21);
}
