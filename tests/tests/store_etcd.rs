//! The shared-store conformance suite against a real etcd (Debian's etcd-server, started
//! on loopback with a temporary data dir), plainly and through the failure-injecting
//! wrapper, and over TLS with a client certificate; and an etcd that goes away for real
//! (SIGSTOP, as a partition looks to a client).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tongban_devkit::etcd::LocalEtcd;
use tongban_gateway::store::etcd::{EtcdConfig, EtcdKv};
use tongban_gateway::store::kv::{Committed, KvStore, Snapshot, Txn};
use tongban_gateway::store::{EtcdTls, StoreError};

async fn connect(etcd: &LocalEtcd, prefix: &str) -> EtcdKv {
    EtcdKv::connect(&EtcdConfig {
        endpoints: vec![etcd.endpoint.clone()],
        prefix: prefix.into(),
        timeout: Duration::from_secs(1),
        tls: None,
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_passes_the_conformance_suite() {
    let etcd = LocalEtcd::start().await.unwrap();
    let store: Arc<dyn KvStore> = Arc::new(connect(&etcd, "/tongban/jinan/").await);
    tongban_gateway::store::conformance::run(store, "conformance/").await;
    // The city prefix isolates cities sharing one etcd.
    let qingdao = connect(&etcd, "/tongban/qingdao/").await;
    assert!(qingdao.range(b"").await.unwrap().entries.is_empty());
}

/// etcd serving clients over TLS only and requiring a client certificate of its CA: the
/// suite passes through a client with the CA and a certificate; without the certificate, or
/// without TLS, a request fails `Unavailable` naming etcd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_a_client_certificate_passes_the_suite() {
    let etcd = LocalEtcd::start_tls().await.unwrap();
    let files = etcd.tls.clone().unwrap();
    assert!(etcd.endpoint.starts_with("https://"), "{}", etcd.endpoint);
    let with = |tls: Option<EtcdTls>, endpoint: String| EtcdConfig {
        endpoints: vec![endpoint],
        prefix: "/tongban/jinan/".into(),
        timeout: Duration::from_secs(1),
        tls,
    };
    let full = EtcdTls {
        ca: files.ca.clone(),
        client: Some((files.client_cert.clone(), files.client_key.clone())),
    };
    let store: Arc<dyn KvStore> = Arc::new(
        EtcdKv::connect(&with(Some(full), etcd.endpoint.clone()))
            .await
            .unwrap(),
    );
    tongban_gateway::store::conformance::run(store, "conformance/").await;

    // A client without a certificate: etcd refuses it.
    let anonymous = EtcdTls {
        ca: files.ca.clone(),
        client: None,
    };
    let refused = match EtcdKv::connect(&with(Some(anonymous), etcd.endpoint.clone())).await {
        Err(e) => e,
        Ok(kv) => kv.range(b"").await.unwrap_err(),
    };
    assert!(matches!(refused, StoreError::Unavailable(_)), "{refused:?}");
    assert!(refused.to_string().contains("etcd"), "{refused}");
    // Plaintext to a TLS etcd.
    let plain = etcd.endpoint.replacen("https://", "http://", 1);
    let refused = match EtcdKv::connect(&with(None, plain)).await {
        Err(e) => e,
        Ok(kv) => kv.range(b"").await.unwrap_err(),
    };
    assert!(matches!(refused, StoreError::Unavailable(_)), "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_etcd_fails_writes_naming_it_and_snapshots_recover() {
    let etcd = LocalEtcd::start().await.unwrap();
    let a: Arc<dyn KvStore> = Arc::new(connect(&etcd, "/tongban/jinan/").await);
    let b: Arc<dyn KvStore> = Arc::new(connect(&etcd, "/tongban/jinan/").await);
    a.commit(Txn::new().put("registry/x", "1")).await.unwrap();
    let snap = Snapshot::follow(b.clone(), b"registry/").await.unwrap();
    assert_eq!(snap.get(b"registry/x").unwrap().value, b"1");

    // etcd stops answering (SIGSTOP: its sockets stay open, as with a partition).
    etcd.freeze().await.unwrap();
    let started = std::time::Instant::now();
    let e = a
        .commit(Txn::new().put("registry/y", "2"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(e.to_string().contains("etcd at http://127.0.0.1:"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the write failed within its timeout, not a hang: {:?}",
        started.elapsed()
    );
    // The snapshot still answers from what it had.
    assert_eq!(snap.get(b"registry/x").unwrap().value, b"1");

    // Back: writes work again and the snapshot catches up by itself.
    etcd.thaw().unwrap();
    let rev = loop {
        match a.commit(Txn::new().put("registry/y", "2")).await {
            Ok(Committed::Applied(r)) => break r,
            Ok(c) => panic!("{c:?}"),
            Err(_) if started.elapsed() < Duration::from_secs(30) => continue,
            Err(e) => panic!("etcd did not come back: {e}"),
        }
    };
    tokio::time::timeout(Duration::from_secs(15), snap.reach(rev))
        .await
        .expect("the snapshot catches up after etcd returns");
    assert_eq!(snap.get(b"registry/y").unwrap().value, b"2");
}

/// The three-member example of deploy/etcd, started from its files: the conformance suite
/// through all three endpoints, and writes go on with one member killed (a quorum of two).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_three_member_example_keeps_working_without_one_member() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/etcd");
    let mut cluster = tongban_devkit::etcd::ExampleCluster::start(&dir)
        .await
        .unwrap();
    let config = EtcdConfig {
        endpoints: cluster.endpoints(),
        prefix: "/tongban/jinan/".into(),
        timeout: Duration::from_secs(2),
        tls: None,
    };
    let store: Arc<dyn KvStore> = Arc::new(EtcdKv::connect(&config).await.unwrap());
    tongban_gateway::store::conformance::run(store.clone(), "three/").await;
    let snap = Snapshot::follow(store.clone(), b"registry/").await.unwrap();
    // One member gone (its process killed): the other two are a quorum.
    drop(cluster.members.remove(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let rev = loop {
        match store.commit(Txn::new().put("registry/after", "1")).await {
            Ok(Committed::Applied(r)) => break r,
            Ok(c) => panic!("{c:?}"),
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("retrying after the member's loss: {e}");
            }
            Err(e) => panic!("two members of three did not take the write: {e}"),
        }
    };
    tokio::time::timeout(Duration::from_secs(20), snap.reach(rev))
        .await
        .expect("the snapshot follows through the remaining members");
}
