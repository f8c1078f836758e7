//! A storm with and without a concurrency limit: 100 000 requests over
//! 10 000 keys (each key requested 10 times, in 10 sweeps), every cycle
//! 100 µs of sleep, on both front ends. Prints, per row: the cycles run,
//! the wall time, the most cycles that ran at once, and the most threads
//! (blocking: runner threads alive, counted by a thread-local guard) or
//! tasks (async: the runtime's alive tasks, sampled in the cycles) there
//! were at once.
//!
//! ```text
//! cargo run --release -p coalescer-benches --bin storm [-- LIMIT]
//! ```
//! (`LIMIT` defaults to 16; the rows without a limit are the baseline.)

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

const KEYS: u32 = 10_000;
const SWEEPS: u32 = 10;
const CYCLE: Duration = Duration::from_micros(100);

/// A gauge and its peak.
#[derive(Debug, Default)]
struct Peak {
    now: AtomicU64,
    most: AtomicU64,
}

impl Peak {
    fn up(&self) {
        let now = self.now.fetch_add(1, Relaxed) + 1;
        self.most.fetch_max(now, Relaxed);
    }

    fn down(&self) {
        self.now.fetch_sub(1, Relaxed);
    }

    fn seen(&self, value: u64) {
        self.most.fetch_max(value, Relaxed);
    }
}

/// Runner threads alive: counted from a thread's first cycle until it exits.
static THREADS: Peak = Peak {
    now: AtomicU64::new(0),
    most: AtomicU64::new(0),
};

struct Alive;

impl Drop for Alive {
    fn drop(&mut self) {
        THREADS.down();
    }
}

thread_local! {
    static ALIVE: Alive = {
        THREADS.up();
        Alive
    };
}

/// One row of the table.
struct Row {
    front_end: &'static str,
    limit: usize,
    cycles: u64,
    wall: Duration,
    running: u64,
    threads_or_tasks: u64,
}

fn blocking(limit: usize) -> Row {
    THREADS.most.store(0, Relaxed);
    let (cycles, running) = (Arc::new(AtomicU64::new(0)), Arc::new(Peak::default()));
    let (n, r) = (Arc::clone(&cycles), Arc::clone(&running));
    let c = coalescer::blocking::Coalescer::builder()
        .concurrency(limit)
        .build(move |_key: &u32| {
            ALIVE.with(|_| {});
            r.up();
            n.fetch_add(1, Relaxed);
            std::thread::sleep(CYCLE);
            r.down();
        });
    let started = Instant::now();
    for _ in 0..SWEEPS {
        for key in 0..KEYS {
            c.request(key).expect("open");
        }
    }
    c.shutdown();
    Row {
        front_end: "blocking",
        limit,
        cycles: cycles.load(Relaxed),
        wall: started.elapsed(),
        running: running.most.load(Relaxed),
        threads_or_tasks: THREADS.most.load(Relaxed),
    }
}

fn tasks(limit: usize) -> Row {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    let (cycles, running, alive) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(Peak::default()),
        Arc::new(Peak::default()),
    );
    let (n, r, a) = (
        Arc::clone(&cycles),
        Arc::clone(&running),
        Arc::clone(&alive),
    );
    let handle = runtime.handle().clone();
    let wall = runtime.block_on(async move {
        let c = coalescer::Coalescer::builder()
            .concurrency(limit)
            .build(move |_key: u32| {
                let (n, r, a, handle) = (
                    Arc::clone(&n),
                    Arc::clone(&r),
                    Arc::clone(&a),
                    handle.clone(),
                );
                async move {
                    r.up();
                    if n.fetch_add(1, Relaxed) % 64 == 0 {
                        a.seen(handle.metrics().num_alive_tasks() as u64);
                    }
                    tokio::time::sleep(CYCLE).await;
                    r.down();
                }
            });
        let started = Instant::now();
        for _ in 0..SWEEPS {
            for key in 0..KEYS {
                c.request(key).expect("open");
            }
            tokio::task::yield_now().await;
        }
        c.shutdown().await;
        started.elapsed()
    });
    Row {
        front_end: "async (tokio, 2 workers)",
        limit,
        cycles: cycles.load(Relaxed),
        wall,
        running: running.most.load(Relaxed),
        threads_or_tasks: alive.most.load(Relaxed),
    }
}

fn main() {
    let limit = std::env::args()
        .nth(1)
        .map_or(Ok(16), |arg| arg.parse::<usize>())
        .unwrap_or_else(|e| {
            eprintln!("storm: LIMIT: {e}");
            std::process::exit(2)
        });
    println!(
        "storm: {} requests over {KEYS} keys ({SWEEPS} sweeps), cycles of {CYCLE:?}",
        u64::from(KEYS) * u64::from(SWEEPS)
    );
    println!("| front end | limit | cycles run | wall time | most cycles at once | most runner threads / alive tasks at once |");
    println!("|---|---|---|---|---|---|");
    for row in [tasks(0), tasks(limit), blocking(0), blocking(limit)] {
        let limit = match row.limit {
            0 => "none".to_owned(),
            n => n.to_string(),
        };
        println!(
            "| {} | {limit} | {} | {:.3} s | {} | {} |",
            row.front_end,
            row.cycles,
            row.wall.as_secs_f64(),
            row.running,
            row.threads_or_tasks
        );
    }
}
