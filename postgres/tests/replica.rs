//! Replicas in one process on a real PostgreSQL: coalescing, no overlap
//! across replicas, takeover and fencing, hand-back at shutdown, retries,
//! requests in the caller's transaction, bad keys, a lost LISTEN
//! connection.
#![cfg(not(loom))]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coalescer_postgres::{Cycle, Error, InvalidKey, Namespace, Replica, Store};
use tokio::sync::{oneshot, Notify};

/// What the cycles saw.
#[derive(Default)]
struct Log {
    /// Cycles running now, per key.
    running: HashMap<String, usize>,
    /// A key's cycles overlapped.
    overlaps: Vec<String>,
    /// Every cycle: key, generation covered, epoch, owner, when it began.
    cycles: Vec<(String, i64, i64, String, Instant)>,
}

type Shared = Arc<Mutex<Log>>;

fn begin(log: &Shared, cycle: &Cycle) {
    let mut log = log.lock().unwrap();
    let n = log.running.entry(cycle.key().to_owned()).or_default();
    *n += 1;
    if *n > 1 {
        log.overlaps.push(cycle.key().to_owned());
    }
    log.cycles.push((
        cycle.key().to_owned(),
        cycle.covers(),
        cycle.epoch(),
        cycle.owner().to_owned(),
        Instant::now(),
    ));
}

fn end(log: &Shared, cycle: &Cycle) {
    *log.lock().unwrap().running.get_mut(cycle.key()).unwrap() -= 1;
}

async fn namespace(prefix: &str) -> Option<Namespace> {
    let config = common::config()?;
    let store = Store::with_config(config, 16).expect("pool");
    store.migrate().await.expect("migrate");
    Some(store.namespace(&common::unique(prefix)).expect("namespace"))
}

/// Waits until the namespace has no rows: every request covered by a
/// completed cycle, and swept. Fails after a minute (a hang, not a timing
/// assertion: nothing here depends on how fast it gets there).
async fn quiescent(ns: &Namespace) {
    let client = common::connect(&common::config().unwrap()).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = common::rows(&client, ns.name()).await.unwrap();
        if rows == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "{rows} keys never went idle");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// In one transaction: records the cycle's effect and completes the cycle
/// (`Cycle::complete_in`).
async fn effect_and_complete(
    client: &mut tokio_postgres::Client,
    cycle: &Cycle,
) -> Result<(), Error> {
    let tx = client.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO coalescer_test_effects VALUES ($1, $2, $3)",
        &[&cycle.namespace().name(), &cycle.key(), &cycle.epoch()],
    )
    .await
    .unwrap();
    cycle.complete_in(tx).await
}

macro_rules! namespace_or_skip {
    ($prefix:expr) => {
        match namespace($prefix).await {
            Some(ns) => ns,
            None => return,
        }
    };
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn inv14a_inv17a_three_replicas_cover_every_request_and_never_overlap_a_key() {
    let ns = namespace_or_skip!("storm");
    let log: Shared = Arc::default();
    let replicas: Vec<Arc<Replica>> = (0..3)
        .map(|i| {
            let log = Arc::clone(&log);
            Arc::new(
                Replica::builder(ns.clone())
                    .name(format!("r{i}"))
                    .poll(Duration::from_millis(200))
                    .concurrency(4)
                    .start(move |cycle: Cycle| {
                        let log = Arc::clone(&log);
                        async move {
                            begin(&log, &cycle);
                            tokio::time::sleep(Duration::from_millis(2)).await;
                            end(&log, &cycle);
                            Ok::<(), String>(())
                        }
                    }),
            )
        })
        .collect();
    let requests: Arc<Mutex<Vec<(String, i64, Instant)>>> = Arc::default();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let replicas = replicas.clone();
        let requests = Arc::clone(&requests);
        tasks.push(tokio::spawn(async move {
            for i in 0..150 {
                let key = format!("k{}", (t * 7 + i * 3) % 20);
                let replica = &replicas[(t + i) % replicas.len()];
                let invoked = Instant::now();
                let r = replica.request(&key).await.expect("request");
                requests.lock().unwrap().push((key, r.generation, invoked));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    quiescent(&ns).await;
    for r in &replicas {
        r.shutdown().await;
    }
    let log = log.lock().unwrap();
    assert!(
        log.overlaps.is_empty(),
        "overlapping cycles of {:?}",
        log.overlaps
    );
    let requests = requests.lock().unwrap();
    for (key, generation, invoked) in requests.iter() {
        assert!(
            log.cycles.iter().any(|(k, covers, _, _, began)| k == key
                && covers >= generation
                && began > invoked),
            "request {key}#{generation} is covered by no cycle that began after it"
        );
    }
    let owners: std::collections::HashSet<&String> = log.cycles.iter().map(|c| &c.3).collect();
    let stats: Vec<_> = replicas.iter().map(|r| r.stats()).collect();
    eprintln!(
        "storm: {} requests, {} cycles on {} replicas; {stats:?}",
        requests.len(),
        log.cycles.len(),
        owners.len()
    );
    assert!(log.cycles.len() < requests.len(), "requests coalesced");
    // The normal path only: no lease ran out, no completion was refused.
    assert!(
        stats
            .iter()
            .all(|s| s.takeovers == 0 && s.fenced == 0 && s.failures == 0),
        "{stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv15_inv16a_a_takeover_after_the_lease_fences_the_old_owner() {
    let ns = namespace_or_skip!("takeover");
    let config = common::config().unwrap();
    common::connect(&config)
        .await
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS coalescer_test_effects \
             (namespace text, key text, epoch bigint)",
        )
        .await
        .unwrap();
    // A: its cycle stalls until told, then tries to commit an effect.
    let (stalled_tx, stalled_rx) = oneshot::channel::<i64>();
    let stalled_tx = Mutex::new(Some(stalled_tx));
    let go = Arc::new(Notify::new());
    let fenced_effect = Arc::new(Mutex::new(None));
    let a = {
        let go = Arc::clone(&go);
        let fenced_effect = Arc::clone(&fenced_effect);
        let config = config.clone();
        Replica::builder(ns.clone())
            .name("a")
            .lease(Duration::from_secs(60))
            .start(move |cycle: Cycle| {
                let first = stalled_tx.lock().unwrap().take();
                let go = Arc::clone(&go);
                let fenced_effect = Arc::clone(&fenced_effect);
                let config = config.clone();
                async move {
                    if let Some(tx) = first {
                        let _ = tx.send(cycle.epoch());
                        go.notified().await;
                        let mut client = common::connect(&config).await;
                        let tx = client.transaction().await.unwrap();
                        let fenced = cycle.fence_in(&tx).await;
                        tx.rollback().await.unwrap();
                        // An effect committed with the completion: refused.
                        let completed = effect_and_complete(&mut client, &cycle).await;
                        *fenced_effect.lock().unwrap() = Some((fenced, completed));
                    }
                    Ok::<(), String>(())
                }
            })
    };
    a.request("k").await.unwrap();
    let a_epoch = stalled_rx.await.unwrap();
    // A stays stalled past its lease (as a paused process would).
    let client = common::connect(&config).await;
    client
        .execute(
            "UPDATE coalescer_keys SET lease_until = now() - interval '1 hour' \
             WHERE namespace = $1 AND key = 'k'",
            &[&ns.name()],
        )
        .await
        .unwrap();
    // B's cycle holds the key while A wakes up: two owners at once, and
    // only the later epoch's effects may be accepted.
    let b_log: Shared = Arc::default();
    let b_go = Arc::new(Notify::new());
    let b = {
        let log = Arc::clone(&b_log);
        let b_go = Arc::clone(&b_go);
        let config = config.clone();
        Replica::builder(ns.clone())
            .name("b")
            .poll(Duration::from_millis(100))
            .start(move |cycle: Cycle| {
                let log = Arc::clone(&log);
                let b_go = Arc::clone(&b_go);
                let config = config.clone();
                async move {
                    begin(&log, &cycle);
                    b_go.notified().await;
                    end(&log, &cycle);
                    let mut client = common::connect(&config).await;
                    effect_and_complete(&mut client, &cycle)
                        .await
                        .map_err(|e| e.to_string())
                }
            })
    };
    // B takes the key over (on its first poll: expiry sends no notification).
    let deadline = Instant::now() + Duration::from_secs(60);
    while b_log.lock().unwrap().cycles.is_empty() {
        assert!(Instant::now() < deadline, "no takeover");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let b_epoch = b_log.lock().unwrap().cycles[0].2;
    assert!(
        b_epoch > a_epoch,
        "epochs increase: {a_epoch} then {b_epoch}"
    );
    // A wakes up: its effect and its completion are rejected.
    go.notify_one();
    while fenced_effect.lock().unwrap().is_none() {
        assert!(Instant::now() < deadline, "A's cycle did not finish");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        matches!(
            *fenced_effect.lock().unwrap(),
            Some((Err(Error::Fenced), Err(Error::Fenced)))
        ),
        "the stale owner's effects were not fenced: {:?}",
        fenced_effect.lock().unwrap()
    );
    while a.stats().fenced == 0 {
        assert!(Instant::now() < deadline, "A's completion was not refused");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    b_go.notify_one();
    quiescent(&ns).await;
    a.shutdown().await;
    b.shutdown().await;
    // Only the owner's effect committed, with its completion (which the
    // replica took: B fenced nothing and the key went idle).
    let effects: Vec<(String, i64)> = client
        .query(
            "SELECT key, epoch FROM coalescer_test_effects WHERE namespace = $1",
            &[&ns.name()],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(effects, vec![("k".to_owned(), b_epoch)]);
    assert_eq!(b.stats().fenced, 0);
    assert_eq!(b.stats().takeovers, 1);
    assert_eq!(a.stats().fenced, 1, "{:?}", a.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv14b_shutdown_hands_a_pending_key_to_another_replica() {
    let ns = namespace_or_skip!("handback");
    let (began_tx, began_rx) = oneshot::channel::<()>();
    let began_tx = Mutex::new(Some(began_tx));
    let go = Arc::new(Notify::new());
    // Both replicas' cycles: A may still claim the handed-back key itself
    // with a claim it sent before shutdown began.
    let log: Shared = Arc::default();
    let a = {
        let go = Arc::clone(&go);
        let log = Arc::clone(&log);
        Replica::builder(ns.clone())
            .name("a")
            .start(move |cycle: Cycle| {
                let first = began_tx.lock().unwrap().take();
                let go = Arc::clone(&go);
                begin(&log, &cycle);
                end(&log, &cycle);
                async move {
                    if let Some(tx) = first {
                        let _ = tx.send(());
                        go.notified().await;
                    }
                    Ok::<(), String>(())
                }
            })
    };
    a.request("k").await.unwrap();
    began_rx.await.unwrap();
    // Requested while A runs it: owed a follow-up.
    let second = a.request("k").await.unwrap();
    assert!(!second.started);
    let a = Arc::new(a);
    let shutdown = tokio::spawn({
        let a = Arc::clone(&a);
        async move { a.shutdown().await }
    });
    // Shutdown rejects new requests (once it began).
    while a.request("other").await.is_ok() {
        tokio::task::yield_now().await;
    }
    assert!(matches!(a.request("k").await, Err(Error::Closed)));
    go.notify_one();
    let report = shutdown.await.unwrap();
    assert_eq!(report.handed_back, 1);
    let b = {
        let log = Arc::clone(&log);
        Replica::builder(ns.clone())
            .name("b")
            .start(move |cycle: Cycle| {
                let log = Arc::clone(&log);
                async move {
                    begin(&log, &cycle);
                    end(&log, &cycle);
                    Ok::<(), String>(())
                }
            })
    };
    quiescent(&ns).await;
    b.shutdown().await;
    let log = log.lock().unwrap();
    assert!(
        log.cycles
            .iter()
            .any(|c| c.0 == "k" && c.1 >= second.generation),
        "the handed-back request was not covered: {:?}",
        log.cycles.iter().map(|c| (&c.0, c.1)).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv16b_a_failing_or_panicking_cycle_is_retried_under_its_claim() {
    let ns = namespace_or_skip!("retry");
    let calls = Arc::new(AtomicUsize::new(0));
    let epochs = Arc::new(Mutex::new(Vec::new()));
    coalescer_fixtures::quiet_injected_panics();
    let r = {
        let calls = Arc::clone(&calls);
        let epochs = Arc::clone(&epochs);
        Replica::builder(ns.clone())
            .retry(Duration::from_millis(1), Duration::from_millis(4))
            .start(move |cycle: Cycle| {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                epochs.lock().unwrap().push(cycle.epoch());
                async move {
                    match n {
                        0 => Err("the first attempt fails".to_owned()),
                        1 => std::panic::panic_any(coalescer_fixtures::INJECTED),
                        _ => Ok(()),
                    }
                }
            })
    };
    r.request("k").await.unwrap();
    quiescent(&ns).await;
    r.shutdown().await;
    assert_eq!(calls.load(Ordering::Relaxed), 3);
    let epochs = epochs.lock().unwrap();
    assert!(
        epochs.windows(2).all(|w| w[0] == w[1]),
        "one claim: {epochs:?}"
    );
    let stats = r.stats();
    assert_eq!((stats.cycles, stats.failures), (3, 2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv14d_a_request_in_the_callers_transaction_commits_with_it() {
    let ns = namespace_or_skip!("tx");
    let config = common::config().unwrap();
    let log: Shared = Arc::default();
    let r = {
        let log = Arc::clone(&log);
        Replica::builder(ns.clone()).start(move |cycle: Cycle| {
            let log = Arc::clone(&log);
            async move {
                begin(&log, &cycle);
                end(&log, &cycle);
                Ok::<(), String>(())
            }
        })
    };
    let mut client = common::connect(&config).await;
    let tx = client.transaction().await.unwrap();
    r.request_in(&tx, "rolled-back").await.unwrap();
    tx.rollback().await.unwrap();
    let rows = common::rows(&client, ns.name()).await.unwrap();
    assert_eq!(rows, 0, "a rolled-back request left a row");
    let tx = client.transaction().await.unwrap();
    let requested = r.request_in(&tx, "committed").await.unwrap();
    tx.commit().await.unwrap();
    quiescent(&ns).await;
    r.shutdown().await;
    let log = log.lock().unwrap();
    assert!(log
        .cycles
        .iter()
        .any(|c| c.0 == "committed" && c.1 >= requested.generation));
    assert!(log.cycles.iter().all(|c| c.0 != "rolled-back"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_keys_get_a_typed_error_and_record_nothing() {
    let ns = namespace_or_skip!("badkeys");
    let r = Replica::builder(ns.clone()).start(|_cycle: Cycle| async { Ok::<(), String>(()) });
    assert!(matches!(
        r.request("a\0b").await,
        Err(Error::InvalidKey(InvalidKey::Nul))
    ));
    let long = "x".repeat(coalescer_postgres::MAX_KEY_BYTES + 1);
    assert!(matches!(
        r.request(&long).await,
        Err(Error::InvalidKey(InvalidKey::TooLong { len })) if len == long.len()
    ));
    assert!(matches!(
        ns.store().namespace(""),
        Err(Error::InvalidKey(InvalidKey::EmptyNamespace))
    ));
    // The longest valid key is stored and run.
    let longest = "y".repeat(coalescer_postgres::MAX_KEY_BYTES);
    r.request(&longest).await.unwrap();
    quiescent(&ns).await;
    r.shutdown().await;
    assert_eq!(r.stats().cycles, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv14c_a_killed_listen_connection_loses_no_request() {
    let ns = namespace_or_skip!("listen");
    let config = common::config().unwrap();
    let r = Replica::builder(ns.clone())
        .poll(Duration::from_millis(200))
        .start(|_cycle: Cycle| async { Ok::<(), String>(()) });
    let client = common::connect(&config).await;
    let name = format!("coalescer-postgres listen {}", r.owner());
    // Wait for the LISTEN connection, then kill it.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let killed: i64 = client
            .query_one(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE application_name = $1) t",
                &[&name],
            )
            .await
            .unwrap()
            .get(0);
        if killed > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no LISTEN connection");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..5 {
        r.request(&format!("k{i}")).await.unwrap();
    }
    quiescent(&ns).await;
    r.shutdown().await;
    assert!(r.stats().cycles >= 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv14e_request_and_wait_returns_once_a_covering_cycle_completed() {
    let ns = namespace_or_skip!("wait");
    let log: Shared = Arc::default();
    // The cycle holds until told, so the wait must outlast it.
    let go = Arc::new(Notify::new());
    let r = {
        let log = Arc::clone(&log);
        let go = Arc::clone(&go);
        Replica::builder(ns.clone()).start(move |cycle: Cycle| {
            let log = Arc::clone(&log);
            let go = Arc::clone(&go);
            async move {
                begin(&log, &cycle);
                go.notified().await;
                end(&log, &cycle);
                Ok::<(), String>(())
            }
        })
    };
    let r = Arc::new(r);
    let waiter = tokio::spawn({
        let r = Arc::clone(&r);
        async move { r.request_and_wait("k").await }
    });
    // The cycle began and has not completed: the waiter still waits.
    while log.lock().unwrap().cycles.is_empty() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let generation = log.lock().unwrap().cycles[0].1;
    assert!(!ns.covered("k", generation).await.unwrap());
    assert!(!waiter.is_finished());
    go.notify_one();
    let requested = waiter.await.unwrap().unwrap();
    assert!(ns.covered("k", requested.generation).await.unwrap());
    {
        let log = log.lock().unwrap();
        assert!(log.cycles.iter().any(|c| c.1 >= requested.generation));
        assert_eq!(
            log.running.get("k"),
            Some(&0),
            "returned before the cycle ended"
        );
    }
    r.shutdown().await;
}
