//! The SQL statements against the pure row transitions (`model.rs`): the
//! same random steps applied to both, every returned value and every row
//! compared after each step, on a real PostgreSQL.
#![cfg(not(loom))]

mod common;

use std::time::Duration;

use coalescer_postgres::model::{Row, Table};
use coalescer_postgres::{Error, Namespace, Store};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const KEYS: [&str; 3] = ["a", "b", "c"];
const OWNERS: [&str; 3] = ["r1", "r2", "r3"];
/// SQL leases are long enough never to expire by themselves in a test; the
/// model's are `LEASE` after `NOW`. Only `expire` ends one.
const SQL_LEASE: Duration = Duration::from_secs(3600);
const NOW: u64 = 10;
const LEASE: u64 = 5;

/// The rows of `ns` as the model holds them, the lease read as held or
/// expired against `now()`.
async fn rows(client: &tokio_postgres::Client, ns: &str) -> Vec<(String, Row)> {
    client
        .query(
            "SELECT key, requested, covered, since, after, claimed, owner, \
                    lease_until > now(), epoch, takeovers \
             FROM coalescer_keys WHERE namespace = $1 ORDER BY key",
            &[&ns],
        )
        .await
        .expect("rows")
        .iter()
        .map(|r| {
            let held: Option<bool> = r.get(7);
            (
                r.get(0),
                Row {
                    requested: r.get(1),
                    covered: r.get(2),
                    since: r.get(3),
                    after: r.get(4),
                    claimed: r.get(5),
                    owner: r.get(6),
                    lease_until: held.map(|h| if h { NOW + LEASE } else { 0 }),
                    epoch: r.get(8),
                    takeovers: r.get(9),
                },
            )
        })
        .collect()
}

async fn sequence_value(client: &tokio_postgres::Client) -> i64 {
    client
        .query_one(
            "SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM coalescer_seq",
            &[],
        )
        .await
        .expect("sequence")
        .get(0)
}

/// The model's epoch of `key`, or a stale one, or a made-up one.
fn some_epoch(rng: &mut StdRng, model: &Table, key: &str, seen: &[i64]) -> i64 {
    match rng.random_range(0..4) {
        0 | 1 => model.rows.get(key).map_or(0, |r| r.epoch),
        2 if !seen.is_empty() => seen[rng.random_range(0..seen.len())],
        _ => rng.random_range(0..model.seq + 2),
    }
}

/// How often each outcome came up, so the run shows it exercised them.
#[derive(Debug, Default)]
struct Tally {
    started: u64,
    coalesced: u64,
    claimed: u64,
    takeovers: u64,
    went_again: u64,
    handed_back: u64,
    went_idle: u64,
    fenced: u64,
    swept: u64,
}

async fn one_sequence(
    ns: &Namespace,
    client: &mut tokio_postgres::Client,
    seed: u64,
    steps: usize,
    tally: &mut Tally,
) {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut model = Table {
        seq: sequence_value(client).await,
        ..Table::default()
    };
    let mut epochs = Vec::new();
    let name = ns.name().to_owned();
    for step in 0..steps {
        let key = KEYS[rng.random_range(0..KEYS.len())];
        let owner = OWNERS[rng.random_range(0..OWNERS.len())];
        let what = rng.random_range(0..100);
        let context = format!("seed {seed} step {step}");
        let op;
        if what < 30 {
            op = format!("request {key}");
            let sql = ns.request(key).await.expect("request");
            assert_eq!(sql, model.request(key), "{context}: {op}");
            if sql.started {
                tally.started += 1;
            } else {
                tally.coalesced += 1;
            }
        } else if what < 35 {
            op = format!("request {key}, rolled back");
            let tx = client.transaction().await.expect("begin");
            ns.request_in(&tx, key).await.expect("request_in");
            tx.rollback().await.expect("rollback");
            // The rows are untouched; the sequence is not transactional.
            model.seq += if model.rows.contains_key(key) { 2 } else { 1 };
        } else if what < 50 {
            let limit = rng.random_range(1..4);
            let running: Vec<String> = KEYS
                .iter()
                .filter(|_| rng.random_bool(0.3))
                .map(|k| k.to_string())
                .collect();
            op = format!("claim {owner} {limit} running {running:?}");
            let mut sql = ns
                .claim(owner, SQL_LEASE, limit, &running)
                .await
                .expect("claim");
            let mut expected = model.claim(owner, NOW, LEASE, limit, &running);
            // One claim's rows draw consecutive epochs in the order the
            // update visits them, which SQL does not fix: the same keys must
            // get the same epochs, in some order.
            let mut drawn: Vec<i64> = sql.iter().map(|c| c.epoch).collect();
            let mut model_drawn: Vec<i64> = expected.iter().map(|c| c.epoch).collect();
            drawn.sort();
            model_drawn.sort();
            assert_eq!(drawn, model_drawn, "{context}: {op}: epochs drawn");
            for c in &sql {
                if let Some(row) = model.rows.get_mut(&c.key) {
                    row.epoch = c.epoch;
                }
            }
            for c in &mut expected {
                c.epoch = model.rows.get(&c.key).map_or(c.epoch, |r| r.epoch);
            }
            sql.sort_by(|a, b| a.key.cmp(&b.key));
            expected.sort_by(|a, b| a.key.cmp(&b.key));
            epochs.extend(drawn);
            tally.claimed += sql.len() as u64;
            tally.takeovers += sql.iter().filter(|c| c.previous.is_some()).count() as u64;
            assert_eq!(sql, expected, "{context}: {op}");
        } else if what < 70 {
            let epoch = some_epoch(&mut rng, &model, key, &epochs);
            let go_on = rng.random_bool(0.7);
            op = format!("complete {key} {owner} {epoch} go_on={go_on}");
            let sql = ns.complete(key, owner, epoch, SQL_LEASE, go_on).await;
            let expected = model.complete(key, owner, epoch, NOW, LEASE, go_on);
            match (sql, expected) {
                (Ok(s), Some(m)) => {
                    assert_eq!(s, m, "{context}: {op}");
                    epochs.push(m.epoch);
                    match (m.claimed, m.pending) {
                        (Some(_), _) => tally.went_again += 1,
                        (None, true) => tally.handed_back += 1,
                        (None, false) => tally.went_idle += 1,
                    }
                }
                (Err(Error::Fenced), None) => tally.fenced += 1,
                (s, m) => panic!("{context}: {op}: SQL {s:?}, model {m:?}"),
            }
        } else if what < 75 {
            let epoch = some_epoch(&mut rng, &model, key, &epochs);
            op = format!("abandon {key} {owner} {epoch}");
            let sql = ns.abandon(key, owner, epoch).await;
            let expected = model.abandon(key, owner, epoch);
            match (sql, expected) {
                (Ok(()), true) | (Err(Error::Fenced), false) => {}
                (s, m) => panic!("{context}: {op}: SQL {s:?}, model {m:?}"),
            }
        } else if what < 82 {
            let mut held: Vec<(String, i64)> = Vec::new();
            for k in KEYS {
                if rng.random_bool(0.6) {
                    held.push((k.to_string(), some_epoch(&mut rng, &model, k, &epochs)));
                }
            }
            op = format!("renew {owner} {held:?}");
            let mut sql = ns.renew(owner, &held, SQL_LEASE).await.expect("renew");
            sql.sort();
            let mut expected = model.renew(owner, &held, NOW, LEASE);
            expected.sort();
            assert_eq!(sql, expected, "{context}: {op}");
        } else if what < 88 {
            let which = rng.random_bool(0.5).then_some(key);
            op = format!("sweep {which:?}");
            let sql = ns.sweep(which).await.expect("sweep");
            assert_eq!(sql, model.sweep(which), "{context}: {op}");
            tally.swept += sql;
        } else if what < 94 {
            op = format!("expire {key}");
            client
                .execute(
                    "UPDATE coalescer_keys SET lease_until = now() - interval '1 hour' \
                     WHERE namespace = $1 AND key = $2 AND owner IS NOT NULL",
                    &[&name, &key],
                )
                .await
                .expect("expire");
            if let Some(row) = model.rows.get_mut(key) {
                if row.owner.is_some() {
                    row.lease_until = Some(0);
                }
            }
        } else {
            let epoch = some_epoch(&mut rng, &model, key, &epochs);
            op = format!("fence {key} {owner} {epoch}");
            let tx = client.transaction().await.expect("begin");
            let sql = ns.fence_in(&tx, key, owner, epoch).await;
            tx.rollback().await.expect("rollback");
            match (sql, model.fence(key, owner, epoch)) {
                (Ok(()), true) | (Err(Error::Fenced), false) => {}
                (s, m) => panic!("{context}: {op}: SQL {s:?}, model {m}"),
            }
        }
        let expected: Vec<(String, Row)> = model
            .rows
            .iter()
            .map(|(k, r)| (k.clone(), r.clone()))
            .collect();
        assert_eq!(
            rows(client, &name).await,
            expected,
            "{context}: rows after {op}"
        );
        assert_eq!(
            sequence_value(client).await,
            model.seq,
            "{context}: sequence after {op}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inv14_to_inv17_every_statement_does_what_the_model_does() {
    let base = database_or_skip!();
    let config = common::fresh_database(&base).await;
    let store = Store::with_config(config.clone(), 4).expect("pool");
    let mut client = common::connect(&config).await;
    let sequences: u64 = std::env::var("COALESCER_DIFF_SEQUENCES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let mut steps = 0;
    let mut tally = Tally::default();
    for seed in 0..sequences {
        let ns = store.namespace(&format!("diff{seed}")).expect("namespace");
        one_sequence(&ns, &mut client, seed, 60, &mut tally).await;
        steps += 60;
    }
    eprintln!("differential: {sequences} sequences, {steps} steps, SQL and model agree: {tally:?}");
    // Each outcome came up: the comparison covered every branch.
    assert!(
        tally.started > 0
            && tally.coalesced > 0
            && tally.takeovers > 0
            && tally.went_again > 0
            && tally.handed_back > 0
            && tally.went_idle > 0
            && tally.fenced > 0
            && tally.swept > 0,
        "{tally:?}"
    );
}
