//! Faults with real replica processes on a real PostgreSQL: a replica
//! killed mid-cycle (SIGKILL), a replica paused past its lease (SIGSTOP,
//! then SIGCONT), and a database restart. The replicas are this test binary
//! started again as children (`replica_process` below, which does nothing
//! unless started as one). Each cycle records its start (autocommitted) and
//! commits its effect with its completion (`Cycle::complete_in`), and an
//! oracle checks the history afterwards: every committed request covered by
//! an accepted effect whose claim covers it, a key's accepted effects in
//! increasing epochs and never overlapping, and no effect from a cycle that
//! was killed or fenced.
#![cfg(not(loom))]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use coalescer_postgres::{Cycle, Error, Namespace, Replica, Store};

/// Created by whichever test gets there first: under a lock, because two
/// concurrent `CREATE TABLE IF NOT EXISTS` of one name can fail.
const SCHEMA: &str = "
    BEGIN;
    SELECT pg_advisory_xact_lock(4242);
    CREATE TABLE IF NOT EXISTS fault_starts (
        namespace text, key text, epoch bigint, pid int,
        started_at timestamptz DEFAULT clock_timestamp());
    CREATE TABLE IF NOT EXISTS fault_effects (
        namespace text, key text, epoch bigint, covers bigint, pid int,
        started_at timestamptz, done_at timestamptz DEFAULT clock_timestamp());
    COMMIT;
";

/// Not a test: the body of a replica process, when this binary is started
/// with `COALESCER_FAULT_CHILD_URL` (see `spawn_replica`). Runs until its
/// stdin closes (the parent is done or gone), then shuts down.
#[test]
fn replica_process() {
    let Ok(url) = std::env::var("COALESCER_FAULT_CHILD_URL") else {
        return;
    };
    let namespace = std::env::var("COALESCER_FAULT_CHILD_NS").expect("namespace");
    let work = Duration::from_millis(
        std::env::var("COALESCER_FAULT_CHILD_WORK_MS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(300),
    );
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let store = Store::connect(&url, 4).expect("store");
        let ns = store.namespace(&namespace).expect("namespace");
        let config: tokio_postgres::Config = url.parse().expect("url");
        let replica = Replica::builder(ns)
            .name(format!("child{}", std::process::id()))
            .lease(Duration::from_secs(1))
            .poll(Duration::from_millis(200))
            .start(move |cycle: Cycle| {
                let config = config.clone();
                async move { child_cycle(&config, &cycle, work).await }
            });
        // On a line of its own (libtest has just printed "test ... ").
        println!("\nready");
        let _ = std::io::stdout().flush();
        // Until the parent closes our stdin.
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            while std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0) {
                line.clear();
            }
        })
        .await;
        replica.shutdown().await;
    });
}

async fn child_cycle(
    config: &tokio_postgres::Config,
    cycle: &Cycle,
    work: Duration,
) -> Result<(), String> {
    let (mut client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(connection);
    let ns = cycle.namespace().name().to_owned();
    let pid = std::process::id() as i32;
    client
        .execute(
            "INSERT INTO fault_starts (namespace, key, epoch, pid) VALUES ($1, $2, $3, $4)",
            &[&ns, &cycle.key(), &cycle.epoch(), &pid],
        )
        .await
        .map_err(|e| e.to_string())?;
    println!("started {} {}", cycle.key(), cycle.epoch());
    let _ = std::io::stdout().flush();
    tokio::time::sleep(work).await;
    let tx = client.transaction().await.map_err(|e| e.to_string())?;
    tx.execute(
        "INSERT INTO fault_effects (namespace, key, epoch, covers, pid, started_at) \
         SELECT $1, $2, $3, $4, $5, started_at FROM fault_starts \
         WHERE namespace = $1 AND key = $2 AND epoch = $3",
        &[&ns, &cycle.key(), &cycle.epoch(), &cycle.covers(), &pid],
    )
    .await
    .map_err(|e| e.to_string())?;
    match cycle.complete_in(tx).await {
        Ok(()) => println!("completed {} {}", cycle.key(), cycle.epoch()),
        Err(Error::Fenced) => println!("fenced {} {}", cycle.key(), cycle.epoch()),
        Err(e) => return Err(e.to_string()),
    }
    let _ = std::io::stdout().flush();
    Ok(())
}

/// A replica process and the lines it printed.
struct ReplicaProcess {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl ReplicaProcess {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }

    fn printed(&self, line: &str) -> bool {
        self.lines.lock().unwrap().iter().any(|l| l == line)
    }

    /// Closes its stdin (it shuts down) and waits for it.
    fn finish(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

impl Drop for ReplicaProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn_replica(url: &str, ns: &Namespace) -> ReplicaProcess {
    spawn_replica_working(url, ns, Duration::from_millis(300))
}

/// A replica process whose cycles take `work`.
fn spawn_replica_working(url: &str, ns: &Namespace, work: Duration) -> ReplicaProcess {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "replica_process",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("COALESCER_FAULT_CHILD_URL", url)
        .env("COALESCER_FAULT_CHILD_NS", ns.name())
        .env(
            "COALESCER_FAULT_CHILD_WORK_MS",
            work.as_millis().to_string(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn a replica process");
    let stdout = child.stdout.take().expect("stdout");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let replica = ReplicaProcess { child, lines };
    wait_for("the replica to start", || replica.printed("ready"));
    replica
}

/// Waits for `condition` (a hang guard of two minutes, not a timing
/// assertion).
fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn wait_for_async<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(120);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The oracle, over the effects the cycles committed.
async fn check_history(
    client: &tokio_postgres::Client,
    ns: &Namespace,
    requests: &[(String, i64)],
) {
    let effects = client
        .query(
            "SELECT key, epoch, covers, started_at >= lag(done_at) OVER w, \
                    epoch > lag(epoch) OVER w \
             FROM fault_effects WHERE namespace = $1 \
             WINDOW w AS (PARTITION BY key ORDER BY done_at)",
            &[&ns.name()],
        )
        .await
        .expect("effects");
    for row in &effects {
        let key: String = row.get(0);
        let after_previous: Option<bool> = row.get(3);
        let increasing: Option<bool> = row.get(4);
        assert_ne!(
            after_previous,
            Some(false),
            "{key}: accepted effects overlap"
        );
        assert_ne!(
            increasing,
            Some(false),
            "{key}: an effect of a lower epoch accepted later"
        );
    }
    for (key, generation) in requests {
        assert!(
            effects
                .iter()
                .any(|r| r.get::<_, String>(0) == *key && r.get::<_, i64>(2) >= *generation),
            "request {key}#{generation} covered by no accepted effect"
        );
    }
}

async fn effect_of(client: &tokio_postgres::Client, ns: &Namespace, epoch: i64) -> bool {
    client
        .query_one(
            "SELECT count(*) FROM fault_effects WHERE namespace = $1 AND epoch = $2",
            &[&ns.name(), &epoch],
        )
        .await
        .is_ok_and(|r| r.get::<_, i64>(0) > 0)
}

/// A start of `pid` with no effect (yet): `(key, epoch)`.
async fn in_flight(
    client: &tokio_postgres::Client,
    ns: &Namespace,
    pid: u32,
) -> Option<(String, i64)> {
    client
        .query_opt(
            "SELECT s.key, s.epoch FROM fault_starts s WHERE s.namespace = $1 AND s.pid = $2 \
             AND NOT EXISTS (SELECT 1 FROM fault_effects e \
                             WHERE e.namespace = s.namespace AND e.epoch = s.epoch) \
             ORDER BY s.started_at DESC LIMIT 1",
            &[&ns.name(), &(pid as i32)],
        )
        .await
        .ok()
        .flatten()
        .map(|r| (r.get(0), r.get(1)))
}

/// Waits until `pid` is in the middle of a cycle: its `(key, epoch)`.
async fn wait_in_flight(
    client: &tokio_postgres::Client,
    ns: &Namespace,
    pid: u32,
) -> (String, i64) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(found) = in_flight(client, ns, pid).await {
            return found;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for a cycle of {pid}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn setup(prefix: &str) -> Option<(String, Namespace, tokio_postgres::Client)> {
    let url = common::url()?;
    let store = Store::connect(&url, 4).expect("store");
    store.migrate().await.expect("migrate");
    let ns = store.namespace(&common::unique(prefix)).expect("namespace");
    let client = common::connect(&url.parse().expect("url")).await;
    client.batch_execute(SCHEMA).await.expect("schema");
    Some((url, ns, client))
}

/// Requests `keys` through `ns`, recording each committed generation.
async fn request_all(ns: &Namespace, keys: &[&str], requests: &mut Vec<(String, i64)>) {
    for key in keys {
        let r = ns.request(key).await.expect("request");
        requests.push((key.to_string(), r.generation));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv14_inv16a_a_replica_killed_mid_cycle_is_taken_over() {
    let Some((url, ns, client)) = setup("kill").await else {
        return;
    };
    let a = spawn_replica(&url, &ns);
    let mut requests = Vec::new();
    request_all(&ns, &["k0"], &mut requests).await;
    // A (the only replica) runs k0; kill it mid-cycle.
    let (key, epoch) = wait_in_flight(&client, &ns, a.pid()).await;
    a.signal("KILL");
    drop(a);
    // Requests keep coming while nobody runs; B starts afterwards.
    request_all(&ns, &["k0", "k1", "k2"], &mut requests).await;
    let b = spawn_replica(&url, &ns);
    request_all(&ns, &["k1", "k3"], &mut requests).await;
    wait_for_async("the keys to go idle", || rows_left_is_zero(&client, &ns)).await;
    b.finish();
    assert!(
        !effect_of(&client, &ns, epoch).await,
        "the killed cycle's effect committed"
    );
    let later: i64 = client
        .query_one(
            "SELECT count(*) FROM fault_effects WHERE namespace = $1 AND key = $2 AND epoch > $3",
            &[&ns.name(), &key, &epoch],
        )
        .await
        .unwrap()
        .get(0);
    assert!(later > 0, "nobody re-ran {key} after the kill");
    check_history(&client, &ns, &requests).await;
}

async fn rows_left_is_zero(client: &tokio_postgres::Client, ns: &Namespace) -> bool {
    common::rows(client, ns.name()).await.is_ok_and(|n| n == 0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv15_a_replica_paused_past_its_lease_is_fenced_when_it_resumes() {
    let Some((url, ns, client)) = setup("pause").await else {
        return;
    };
    let a = spawn_replica(&url, &ns);
    let mut requests = Vec::new();
    request_all(&ns, &["k0"], &mut requests).await;
    let (key, epoch) = wait_in_flight(&client, &ns, a.pid()).await;
    a.signal("STOP");
    // B's cycles are long: A resumes while B holds the key, so A's late
    // completion meets B's claim (not an idle row).
    let b = spawn_replica_working(&url, &ns, Duration::from_secs(3));
    wait_for_async("B to take the key over", || {
        let client = &client;
        let ns = &ns;
        let key = key.clone();
        async move {
            client
                .query_one(
                    "SELECT count(*) FROM fault_starts WHERE namespace = $1 AND key = $2 \
                     AND epoch > $3",
                    &[&ns.name(), &key, &epoch],
                )
                .await
                .is_ok_and(|r| r.get::<_, i64>(0) > 0)
        }
    })
    .await;
    a.signal("CONT");
    let line = format!("fenced {key} {epoch}");
    wait_for("A's late completion to be fenced", || a.printed(&line));
    request_all(&ns, &["k0", "k1"], &mut requests).await;
    wait_for_async("the keys to go idle", || rows_left_is_zero(&client, &ns)).await;
    a.finish();
    b.finish();
    assert!(
        !effect_of(&client, &ns, epoch).await,
        "the paused owner's effect committed"
    );
    check_history(&client, &ns, &requests).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv14_committed_requests_survive_a_database_restart() {
    // Its own cluster: this test restarts it.
    let Some(cluster) = common::own_cluster() else {
        return;
    };
    let store = Store::connect(&cluster.url, 4).expect("store");
    store.migrate().await.expect("migrate");
    let ns = store.namespace("restart").expect("namespace");
    let mut requests = Vec::new();
    // Committed with no replica running: only the database holds them.
    request_all(&ns, &["k0", "k1", "k2"], &mut requests).await;
    cluster.restart();
    let log: Arc<Mutex<Vec<(String, i64)>>> = Arc::default();
    let replica = {
        let log = Arc::clone(&log);
        Replica::builder(ns.clone())
            .poll(Duration::from_millis(200))
            .lease(Duration::from_secs(2))
            .start(move |cycle: Cycle| {
                let log = Arc::clone(&log);
                async move {
                    log.lock()
                        .unwrap()
                        .push((cycle.key().to_owned(), cycle.covers()));
                    Ok::<(), String>(())
                }
            })
    };
    // And once more while the replica runs: its connections break.
    cluster.restart();
    request_all(&ns, &["k1", "k3"], &mut requests).await;
    let client = common::connect(&cluster.url.parse().expect("url")).await;
    wait_for_async("the keys to go idle", || rows_left_is_zero(&client, &ns)).await;
    replica.shutdown().await;
    let log = log.lock().unwrap();
    for (key, generation) in &requests {
        assert!(
            log.iter()
                .any(|(k, covers)| k == key && covers >= generation),
            "request {key}#{generation} lost across the restart: {log:?}"
        );
    }
}
