//! TLS between replicas and clients: a replica set runs with mutual TLS using certificates this
//! test generates, and a peer whose certificate comes from another CA is refused while the
//! replicas keep serving.

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::Duration;

use common::start_set;
use rcgen::{BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use tandem_client::{Client, ClientError, ClientOptions};
use tandem_tls::TlsFiles;

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    let key = KeyPair::generate().expect("ca key");
    let cert = params.self_signed(&key).expect("self-signed ca");
    Ca {
        pem: cert.pem(),
        issuer: Issuer::new(params, key),
    }
}

/// Writes a certificate for loopback signed by `ca`, and the CA, into `dir`; returns the files.
fn leaf(ca: &Ca, dir: &Path, name: &str) -> TlsFiles {
    let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("leaf params");
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
    let key = KeyPair::generate().expect("leaf key");
    let cert = params.signed_by(&key, &ca.issuer).expect("signed leaf");
    std::fs::create_dir_all(dir).expect("tls dir");
    let files = TlsFiles {
        cert: Some(dir.join(format!("{name}.pem"))),
        key: Some(dir.join(format!("{name}.key"))),
        ca: Some(dir.join("ca.pem")),
    };
    std::fs::write(files.cert.as_ref().expect("cert path"), cert.pem()).expect("write cert");
    std::fs::write(files.key.as_ref().expect("key path"), key.serialize_pem()).expect("write key");
    std::fs::write(files.ca.as_ref().expect("ca path"), &ca.pem).expect("write ca");
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_set_runs_with_mutual_tls_and_refuses_a_foreign_ca() {
    let root = tempfile::tempdir().expect("tempdir");
    let good = ca("tandem test CA");
    let foreign = ca("some other CA");
    let tls_dir = root.path().join("tls");
    let tls = |id: u64| leaf(&good, &tls_dir.join(format!("n{id}")), &format!("n{id}"));

    eprintln!("--- three replicas with mutual TLS form a set, write and read back");
    let (mut replicas, client) = start_set(3, root.path(), tls).await;
    for i in 0..20 {
        client
            .put(&format!("tls/{i}"), format!("v{i}"))
            .await
            .expect("put over TLS");
    }
    assert_eq!(client.range("tls/", None).await.expect("range over TLS").len(), 20);
    // Every replica got the data over the (TLS) replication links.
    let addrs: Vec<String> = replicas.iter().map(|r| r.addr.clone()).collect();
    for addr in &addrs {
        common::eventually("secondary applied everything", Duration::from_secs(10), async || {
            client.get_stale(addr, "tls/19").await.ok().flatten().is_some()
        })
        .await;
    }

    eprintln!("--- a client with a certificate from another CA is refused");
    let mut intruder_files = leaf(&foreign, &root.path().join("intruder"), "intruder");
    // It trusts our CA (so it would accept the server) but presents a foreign certificate.
    std::fs::write(intruder_files.ca.as_ref().expect("ca path"), &good.pem).expect("write ca");
    let intruder = Client::new(
        addrs.clone(),
        ClientOptions {
            tls: intruder_files.clone(),
            deadline: Duration::from_secs(2),
            ..ClientOptions::default()
        },
    )
    .expect("intruder client");
    let refused = intruder.status(&addrs[0]).await;
    assert!(
        refused.is_err(),
        "a foreign client certificate must be refused, got {refused:?}"
    );
    assert!(intruder.put("tls/intruder", "x").await.is_err());

    eprintln!("--- a client without any certificate is refused");
    intruder_files.cert = None;
    intruder_files.key = None;
    let anonymous = Client::new(
        addrs.clone(),
        ClientOptions {
            tls: intruder_files,
            deadline: Duration::from_secs(2),
            ..ClientOptions::default()
        },
    )
    .expect("anonymous client");
    assert!(
        anonymous.status(&addrs[0]).await.is_err(),
        "mutual TLS requires a client certificate"
    );

    eprintln!("--- a client that trusts only the other CA refuses our replicas");
    let wary = Client::new(
        addrs.clone(),
        ClientOptions {
            tls: leaf(&foreign, &root.path().join("wary"), "wary"),
            deadline: Duration::from_secs(2),
            ..ClientOptions::default()
        },
    )
    .expect("wary client");
    match wary.status(&addrs[0]).await {
        Err(ClientError::Unavailable { .. }) | Err(ClientError::Refused(_)) => {}
        other => panic!("server certificate of another CA must not be accepted: {other:?}"),
    }

    eprintln!("--- the replicas kept serving the legitimate client");
    client.put("tls/after", "still here").await.expect("put after refusals");
    assert_eq!(
        client.get("tls/after").await.expect("get").map(|kv| kv.value),
        Some(b"still here".to_vec())
    );
    assert!(
        client.get("tls/intruder").await.expect("get").is_none(),
        "the intruder wrote nothing"
    );

    for replica in &mut replicas {
        replica.stop().await;
    }
}
