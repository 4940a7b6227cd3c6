//! The behaviour every shared-store backend must show: one suite, run against sled (in this
//! crate's tests), against etcd (`tests/tests/store_etcd.rs`, with a real etcd) and through
//! the failure-injecting wrapper. Each check works under its own prefix, so the suite can
//! run against a store that holds other data.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::faulty::Faulty;
use super::kv::{Committed, Cond, Event, KvStore, Snapshot, Txn};
use super::StoreError;

const WAIT: Duration = Duration::from_secs(10);

fn key(p: &str, k: &str) -> Vec<u8> {
    format!("{p}{k}").into_bytes()
}

/// Every check, under prefixes starting with `base` (e.g. `conformance/<unique>/`).
pub async fn run(store: Arc<dyn KvStore>, base: &str) {
    reads_and_writes(store.as_ref(), &format!("{base}rw/")).await;
    transactions_are_atomic(store.as_ref(), &format!("{base}atomic/")).await;
    one_of_two_creates_wins(store.clone(), &format!("{base}create/")).await;
    compare_and_swap_loses_no_update(store.clone(), &format!("{base}cas/")).await;
    watches_deliver_every_change_in_order(store.as_ref(), &format!("{base}watch/")).await;
    snapshots_follow_the_store(store.clone(), &format!("{base}snap/")).await;
    an_unreachable_store_fails_writes_and_keeps_snapshots(store, &format!("{base}down/")).await;
}

async fn reads_and_writes(s: &dyn KvStore, p: &str) {
    assert!(s.get(&key(p, "a")).await.unwrap().is_none());
    let r1 = match s.commit(Txn::new().put(key(p, "b"), "2")).await.unwrap() {
        Committed::Applied(r) => r,
        c => panic!("{c:?}"),
    };
    let r2 = match s.commit(Txn::new().put(key(p, "a"), "1")).await.unwrap() {
        Committed::Applied(r) => r,
        c => panic!("{c:?}"),
    };
    assert!(r2 > r1, "revisions grow: {r1} then {r2}");
    let a = s.get(&key(p, "a")).await.unwrap().unwrap();
    assert_eq!((a.value.as_slice(), a.revision), (&b"1"[..], r2));
    let range = s.range(p.as_bytes()).await.unwrap();
    let keys: Vec<_> = range.entries.iter().map(|kv| kv.key.clone()).collect();
    assert_eq!(keys, vec![key(p, "a"), key(p, "b")], "key order");
    assert!(range.revision >= r2);
    // Another prefix does not see them.
    assert!(s
        .range(format!("{p}x/").as_bytes())
        .await
        .unwrap()
        .entries
        .is_empty());
    s.commit(Txn::new().delete(key(p, "a"))).await.unwrap();
    assert!(s.get(&key(p, "a")).await.unwrap().is_none());
}

async fn transactions_are_atomic(s: &dyn KvStore, p: &str) {
    s.commit(Txn::new().put(key(p, "x"), "0")).await.unwrap();
    // A condition that fails: none of the writes.
    let c = s
        .commit(
            Txn::new()
                .when(Cond::Equals(key(p, "x"), b"1".to_vec()))
                .put(key(p, "y"), "1")
                .put(key(p, "z"), "1"),
        )
        .await
        .unwrap();
    assert_eq!(c, Committed::Conflict);
    assert!(s.get(&key(p, "y")).await.unwrap().is_none());
    // All hold: every write, at one revision.
    let c = s
        .commit(
            Txn::new()
                .when(Cond::Equals(key(p, "x"), b"0".to_vec()))
                .when(Cond::Absent(key(p, "y")))
                .put(key(p, "y"), "1")
                .put(key(p, "z"), "1")
                .delete(key(p, "x")),
        )
        .await
        .unwrap();
    let Committed::Applied(rev) = c else {
        panic!("{c:?}")
    };
    let y = s.get(&key(p, "y")).await.unwrap().unwrap();
    let z = s.get(&key(p, "z")).await.unwrap().unwrap();
    assert_eq!((y.revision, z.revision), (rev, rev));
    assert!(s.get(&key(p, "x")).await.unwrap().is_none());
}

async fn one_of_two_creates_wins(s: Arc<dyn KvStore>, p: &str) {
    for round in 0..5 {
        let k = key(p, &format!("k{round}"));
        let tasks: Vec<_> = (0..2)
            .map(|i| {
                let s = s.clone();
                let k = k.clone();
                tokio::spawn(async move {
                    s.commit(
                        Txn::new()
                            .when(Cond::Absent(k.clone()))
                            .put(k, format!("{i}")),
                    )
                    .await
                    .unwrap()
                })
            })
            .collect();
        let mut applied = 0;
        for t in tasks {
            if matches!(t.await.unwrap(), Committed::Applied(_)) {
                applied += 1;
            }
        }
        assert_eq!(applied, 1, "round {round}: exactly one create applies");
    }
}

async fn compare_and_swap_loses_no_update(s: Arc<dyn KvStore>, p: &str) {
    let k = key(p, "counter");
    let tasks: Vec<_> = (0..3)
        .map(|_| {
            let s = s.clone();
            let k = k.clone();
            tokio::spawn(async move {
                for _ in 0..10 {
                    loop {
                        let cur = s.get(&k).await.unwrap();
                        let (n, rev) = cur.map_or((0u64, 0), |kv| {
                            (
                                String::from_utf8_lossy(&kv.value).parse().unwrap(),
                                kv.revision,
                            )
                        });
                        let c = s
                            .commit(
                                Txn::new()
                                    .when(Cond::Unchanged(k.clone(), rev))
                                    .put(k.clone(), (n + 1).to_string()),
                            )
                            .await
                            .unwrap();
                        if matches!(c, Committed::Applied(_)) {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let v = s.get(&k).await.unwrap().unwrap();
    assert_eq!(v.value, b"30", "30 increments, none lost");
}

async fn watches_deliver_every_change_in_order(s: &dyn KvStore, p: &str) {
    let start = s.range(p.as_bytes()).await.unwrap().revision;
    s.commit(Txn::new().put(key(p, "a"), "1")).await.unwrap();
    // A key beside the prefix (not under it): not seen.
    s.commit(Txn::new().put(format!("{}-outside", p.trim_end_matches('/')), "0"))
        .await
        .unwrap();
    let mut w = s.watch(p.as_bytes(), start).await.unwrap();
    // Changes before the watch was opened (after `start`) come first, then live ones.
    s.commit(Txn::new().put(key(p, "b"), "2").put(key(p, "a"), "3"))
        .await
        .unwrap();
    s.commit(Txn::new().delete(key(p, "a"))).await.unwrap();
    let mut seen = Vec::new();
    let mut batches = Vec::new();
    while seen.len() < 4 {
        let batch = tokio::time::timeout(WAIT, w.next())
            .await
            .expect("a watch event in time")
            .expect("the watch goes on")
            .unwrap();
        batches.push(batch.len());
        seen.extend(batch);
    }
    // One batch per transaction: the two writes of the second commit come together.
    assert_eq!(batches, vec![1, 2, 1], "batches of {seen:?}");
    let brief: Vec<(String, Option<String>)> = seen
        .iter()
        .map(|e| match e {
            Event::Put(kv) => (
                String::from_utf8_lossy(&kv.key).into_owned(),
                Some(String::from_utf8_lossy(&kv.value).into_owned()),
            ),
            Event::Delete { key, .. } => (String::from_utf8_lossy(key).into_owned(), None),
        })
        .collect();
    let k = |x: &str| format!("{p}{x}");
    // The two writes of one commit share a revision; their order within it is the store's.
    assert_eq!(brief[0], (k("a"), Some("1".into())));
    let mut middle = vec![brief[1].clone(), brief[2].clone()];
    middle.sort();
    assert_eq!(
        middle,
        vec![(k("a"), Some("3".into())), (k("b"), Some("2".into()))]
    );
    assert_eq!(brief[3], (k("a"), None));
    assert!(seen.windows(2).all(|w| w[0].revision() <= w[1].revision()));
    assert_eq!(seen[1].revision(), seen[2].revision());
}

async fn snapshots_follow_the_store(s: Arc<dyn KvStore>, p: &str) {
    s.commit(Txn::new().put(key(p, "a"), "1")).await.unwrap();
    let snap = Snapshot::follow(s.clone(), p.as_bytes()).await.unwrap();
    assert_eq!(snap.get(&key(p, "a")).unwrap().value, b"1");
    let Committed::Applied(rev) = s
        .commit(Txn::new().put(key(p, "b"), "2").delete(key(p, "a")))
        .await
        .unwrap()
    else {
        panic!("not applied")
    };
    tokio::time::timeout(WAIT, snap.reach(rev))
        .await
        .expect("the snapshot reaches the commit");
    assert!(snap.get(&key(p, "a")).is_none());
    assert_eq!(snap.scan(p.as_bytes()).len(), 1);
}

async fn an_unreachable_store_fails_writes_and_keeps_snapshots(inner: Arc<dyn KvStore>, p: &str) {
    let (faulty, faults) = Faulty::new(inner.clone());
    let faulty: Arc<dyn KvStore> = Arc::new(faulty);
    faulty
        .commit(Txn::new().put(key(p, "a"), "1"))
        .await
        .unwrap();
    let snap = Snapshot::follow(faulty.clone(), p.as_bytes())
        .await
        .unwrap();
    // One failed commit: an error, nothing written.
    faults.fail_commits.store(1, Ordering::SeqCst);
    let e = faulty
        .commit(Txn::new().put(key(p, "b"), "2"))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Unavailable(_)), "{e:?}");
    assert!(inner.get(&key(p, "b")).await.unwrap().is_none());
    // Down: writes refused naming the backend, reads of the snapshot still answer.
    faults.down.store(true, Ordering::SeqCst);
    let e = faulty
        .commit(Txn::new().put(key(p, "b"), "2"))
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains(inner.backend()),
        "the error names the store: {e}"
    );
    let mut liveness = snap.liveness();
    tokio::time::timeout(WAIT, liveness.wait_for(|live| !live))
        .await
        .expect("the snapshot notices the store is gone")
        .unwrap();
    assert_eq!(snap.get(&key(p, "a")).unwrap().value, b"1");
    // Meanwhile another replica writes (straight to the store); back up, it catches up.
    let Committed::Applied(rev) = inner
        .commit(Txn::new().put(key(p, "c"), "3"))
        .await
        .unwrap()
    else {
        panic!("not applied")
    };
    faults.down.store(false, Ordering::SeqCst);
    tokio::time::timeout(WAIT, snap.reach(rev))
        .await
        .expect("the snapshot catches up once the store is back");
    assert_eq!(snap.get(&key(p, "c")).unwrap().value, b"3");
    assert!(snap.live());
}
