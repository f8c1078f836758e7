//! The database the tests run against: `COALESCER_PG_URL` if set, else a
//! throwaway cluster on 127.0.0.1 started from the installed binaries by
//! `scripts/pg-throwaway.sh` (stopped and removed once this test process
//! exits). Without PostgreSQL installed the tests skip, loudly — unless
//! `COALESCER_PG_REQUIRED=1` (CI), where that is a failure.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use tokio_postgres::{Config, NoTls};

/// The server's URL, once per test process; `None`: skip.
pub fn url() -> Option<String> {
    static URL: OnceLock<Option<String>> = OnceLock::new();
    URL.get_or_init(start).clone()
}

fn required() -> bool {
    std::env::var("COALESCER_PG_REQUIRED").is_ok_and(|v| v == "1")
}

fn start() -> Option<String> {
    if let Ok(url) = std::env::var("COALESCER_PG_URL") {
        return Some(url);
    }
    throwaway(&fresh_dir())
}

fn script() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-throwaway.sh")
}

fn fresh_dir() -> PathBuf {
    std::env::temp_dir().join(format!(
        "coalescer-pg-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ))
}

/// A cluster of this test's own, which it may restart (`scripts/pg-throwaway.sh`;
/// stopped and removed when dropped, or when this process exits).
pub struct Cluster {
    pub url: String,
    dir: PathBuf,
}

impl Cluster {
    /// Restarts the server (fast shutdown: every connection is closed), on
    /// the same port.
    pub fn restart(&self) {
        let status = Command::new("bash")
            .arg(script())
            .arg("restart")
            .arg(&self.dir)
            .status()
            .expect("run scripts/pg-throwaway.sh");
        assert!(status.success(), "restart failed");
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(&self.dir)
            .status();
    }
}

/// A cluster of the calling test's own (even when `COALESCER_PG_URL` names
/// one: a test that restarts its server must own it); `None`: skip.
pub fn own_cluster() -> Option<Cluster> {
    let dir = fresh_dir();
    throwaway(&dir).map(|url| Cluster { url, dir })
}

fn throwaway(dir: &std::path::Path) -> Option<String> {
    let out = Command::new("bash")
        .arg(script())
        .arg("start")
        .arg(dir)
        .arg("--watch")
        .arg(std::process::id().to_string())
        .output()
        .expect("run scripts/pg-throwaway.sh");
    match out.status.code() {
        Some(0) => Some(
            String::from_utf8(out.stdout)
                .expect("utf-8 URL")
                .trim()
                .to_owned(),
        ),
        Some(3) if !required() => {
            eprintln!(
                "\n\n********************************************************************\n\
                 SKIPPED: the PostgreSQL tests did not run: {}\
                 Install PostgreSQL (Debian: apt-get install postgresql) or set\n\
                 COALESCER_PG_URL; CI sets COALESCER_PG_REQUIRED=1, where this fails.\n\
                 ********************************************************************\n",
                String::from_utf8_lossy(&out.stderr)
            );
            None
        }
        _ => panic!(
            "could not start a throwaway PostgreSQL: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// The server's configuration, or skip the calling test.
#[macro_export]
macro_rules! database_or_skip {
    () => {
        match common::config() {
            Some(config) => config,
            None => return,
        }
    };
}

/// The configuration of the server's default database.
pub fn config() -> Option<Config> {
    url().map(|u| u.parse().expect("a valid PostgreSQL URL"))
}

/// A name no other test of this process uses.
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// A database of its own (its own fencing sequence), migrated.
pub async fn fresh_database(base: &Config) -> Config {
    let (client, connection) = base.connect(NoTls).await.expect("connect");
    tokio::spawn(connection);
    let name = unique("coalescer_test");
    // An identifier cannot be a bind parameter; `name` is made here from
    // a fixed prefix and numbers, never from outside input.
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let mut config = base.clone();
    config.dbname(&name);
    let store = coalescer_postgres::Store::with_config(config.clone(), 4).expect("pool");
    store.migrate().await.expect("migrate");
    config
}

/// A plain connection (driven by a spawned task).
pub async fn connect(config: &Config) -> tokio_postgres::Client {
    let (client, connection) = config.connect(NoTls).await.expect("connect");
    tokio::spawn(connection);
    client
}

/// How many rows namespace `namespace` has in `coalescer_keys` (0: every
/// request covered and swept).
pub async fn rows(
    client: &tokio_postgres::Client,
    namespace: &str,
) -> Result<i64, tokio_postgres::Error> {
    client
        .query_one(
            "SELECT count(*) FROM coalescer_keys WHERE namespace = $1",
            &[&namespace],
        )
        .await
        .map(|r| r.get(0))
}
