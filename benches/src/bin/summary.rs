//! Prints the ratio table from the estimates `cargo bench -p
//! coalescer-benches` wrote, then measures burst absorption, memory per key
//! and allocations on the coalesced path directly.
//!
//! ```text
//! cargo bench -p coalescer-benches && cargo run -p coalescer-benches --release --bin summary
//! ```

#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
fn main() -> std::process::ExitCode {
    summary::main()
}

#[cfg(not(loom))]
mod summary {
    use std::path::{Path, PathBuf};
    use std::process::ExitCode;
    use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use coalescer::Coalescer;
    use coalescer_benches::{u64_keys, Held};
    use coalescer_fixtures::CountingAllocator;

    #[global_allocator]
    static ALLOCATOR: CountingAllocator = CountingAllocator::new();

    fn criterion_dir() -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
        target.join("criterion")
    }

    /// The mean of bench `id` (`group/name/threads`), in ns per iteration.
    fn mean(id: &str) -> Option<f64> {
        // Criterion keeps `group/function` and turns further `/` into `_`.
        let (group, function) = id.split_once('/')?;
        let path = criterion_dir()
            .join(group)
            .join(function.replace('/', "_"))
            .join("new/estimates.json");
        let text = std::fs::read_to_string(path).ok()?;
        let json: serde_json::Value = serde_json::from_str(&text).ok()?;
        json["mean"]["point_estimate"].as_f64()
    }

    struct Row {
        what: &'static str,
        ours: &'static str,
        base: &'static str,
        /// `ours / base` (time) or `base / ours` (throughput).
        throughput: bool,
        goal: Option<(&'static str, f64)>,
    }

    const ROWS: &[Row] = &[
        Row {
            what: "coalesced request, hot key, 1 thread vs one fetch_or (time ratio)",
            ours: "request/ours_u64_hot/1t",
            base: "request/limit_fetch_or/1t",
            throughput: false,
            goal: Some(("<=", 4.0)),
        },
        Row {
            what: "with a retry policy vs without, hot key, 1 thread (time ratio)",
            ours: "request/ours_u64_hot_retry/1t",
            base: "request/ours_u64_hot/1t",
            throughput: false,
            goal: Some(("<=", 1.1)),
        },
        Row {
            what: "with a retry policy vs without, 256 keys, 2 threads (time ratio)",
            ours: "request/ours_u64_256_retry/2t",
            base: "request/ours_u64_256/2t",
            throughput: false,
            goal: Some(("<=", 1.1)),
        },
        Row {
            what: "hot key, 2 threads vs Go port (throughput ratio)",
            ours: "request/ours_u64_hot/2t",
            base: "request/go_u64_hot/2t",
            throughput: true,
            goal: Some((">=", 10.0)),
        },
        Row {
            what: "256 keys, 2 threads vs Go port (throughput ratio)",
            ours: "request/ours_u64_256/2t",
            base: "request/go_u64_256/2t",
            throughput: true,
            goal: Some((">=", 10.0)),
        },
        Row {
            what: "hot key, 1 thread vs Go port (throughput ratio)",
            ours: "request/ours_u64_hot/1t",
            base: "request/go_u64_hot/1t",
            throughput: true,
            goal: None,
        },
        Row {
            what: "256 keys, 1 thread vs Go port (throughput ratio)",
            ours: "request/ours_u64_256/1t",
            base: "request/go_u64_256/1t",
            throughput: true,
            goal: None,
        },
        Row {
            what: "100 000 keys, 1 thread vs Go port (throughput ratio)",
            ours: "request/ours_u64_100000/1t",
            base: "request/go_u64_100000/1t",
            throughput: true,
            goal: None,
        },
        Row {
            what: "100 000 keys, 2 threads vs Go port (throughput ratio)",
            ours: "request/ours_u64_100000/2t",
            base: "request/go_u64_100000/2t",
            throughput: true,
            goal: None,
        },
        Row {
            what: "String keys, hot, 1 thread vs Go port (throughput ratio)",
            ours: "request/ours_string_hot/1t",
            base: "request/go_string_hot/1t",
            throughput: true,
            goal: None,
        },
        Row {
            what: "String keys, hot, 2 threads vs Go port (throughput ratio)",
            ours: "request/ours_string_hot/2t",
            base: "request/go_string_hot/2t",
            throughput: true,
            goal: None,
        },
        Row {
            what: "String keys, 256, 2 threads vs Go port (throughput ratio)",
            ours: "request/ours_string_256/2t",
            base: "request/go_string_256/2t",
            throughput: true,
            goal: None,
        },
        Row {
            what: "tokio request -> cycle start vs spawn + signal (time ratio)",
            ours: "latency/tokio_request_to_start",
            base: "latency/tokio_spawn_signal",
            throughput: false,
            goal: Some(("<=", 1.5)),
        },
        Row {
            what: "blocking request -> cycle start vs thread spawn + signal (time ratio)",
            ours: "latency/blocking_request_to_start",
            base: "latency/thread_spawn_signal",
            throughput: false,
            goal: None,
        },
    ];

    fn ratios() -> bool {
        println!("| scenario | ours (ns/iter) | baseline (ns/iter) | ratio | goal | met |");
        println!("|---|---|---|---|---|---|");
        let mut all_met = true;
        for row in ROWS {
            let (Some(ours), Some(base)) = (mean(row.ours), mean(row.base)) else {
                println!(
                    "| {} | (not measured: run `cargo bench -p coalescer-benches` first) | | | | |",
                    row.what
                );
                all_met = false;
                continue;
            };
            let ratio = if row.throughput {
                base / ours
            } else {
                ours / base
            };
            let (goal, met) = match row.goal {
                Some(("<=", g)) => (format!("<= {g}"), if ratio <= g { "yes" } else { "**no**" }),
                Some((_, g)) => (format!(">= {g}"), if ratio >= g { "yes" } else { "**no**" }),
                None => (String::new(), ""),
            };
            all_met &= met != "**no**";
            println!(
                "| {} | {ours:.1} | {base:.1} | {ratio:.2} | {goal} | {met} |",
                row.what
            );
        }
        all_met
    }

    /// 100 000 requests from 2 threads over 1 000 keys while each cycle
    /// takes 1 ms.
    fn burst() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let c = rt.block_on(async {
            Coalescer::new(|_key: u64| tokio::time::sleep(Duration::from_millis(1)))
        });
        let started = Instant::now();
        std::thread::scope(|s| {
            for t in 0..2u64 {
                let c = &c;
                s.spawn(move || {
                    for i in 0..50_000u64 {
                        c.request((i * 7 + t * 13) % 1_000).unwrap();
                    }
                });
            }
        });
        rt.block_on(c.shutdown());
        let elapsed = started.elapsed();
        let cycles = c.stats().cycles;
        println!(
            "burst: 100000 requests over 1000 keys (1 ms cycles, 2 threads): {cycles} cycles \
             ({:.1} requests per cycle), drained in {:.1} ms",
            100_000.0 / cycles as f64,
            elapsed.as_secs_f64() * 1e3
        );
    }

    /// Bytes per active key, and bytes retained per key once idle.
    fn memory() -> bool {
        const N: usize = 10_000;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let release = Arc::new(tokio::sync::Notify::new());
        let running = Arc::new(AtomicUsize::new(0));
        let (gate, count) = (Arc::clone(&release), Arc::clone(&running));
        let c = rt.block_on(async move {
            Coalescer::new(move |_key: u64| {
                let gate = Arc::clone(&gate);
                count.fetch_add(1, Relaxed);
                async move { gate.notified().await }
            })
        });
        // One round: N keys active at once, then all idle again. The first
        // round warms up what the runtime sizes once (its queues); the
        // second is measured.
        let round = |first: u64| {
            running.store(0, Relaxed);
            let base = ALLOCATOR.live_bytes();
            for k in first..first + N as u64 {
                c.request(k).unwrap();
            }
            while running.load(Relaxed) < N {
                std::thread::sleep(Duration::from_millis(1));
            }
            let active = ALLOCATOR.live_bytes();
            while c.active_keys() > 0 {
                release.notify_waiters();
                std::thread::sleep(Duration::from_millis(1));
            }
            (base, active, ALLOCATOR.live_bytes())
        };
        let _ = round(0);
        let (base, active, idle) = round(N as u64);
        let per_active = (active - base) as f64 / N as f64;
        let per_idle = (idle - base) as f64 / N as f64;
        println!(
            "memory: {per_active:.0} bytes per active key (slot, map entry, runner task and \
             its held cycle future); {per_idle:.2} bytes retained per idle key ({N} keys)"
        );
        rt.block_on(c.shutdown());
        per_idle <= 0.0
    }

    /// Heap allocations on the coalesced path.
    fn allocations() -> bool {
        let held = Held::new(&u64_keys(256));
        let before = ALLOCATOR.allocations();
        for i in 0..100_000u64 {
            held.coalescer.request(i % 256).unwrap();
        }
        let n = ALLOCATOR.allocations() - before;
        println!("allocations: {n} in 100000 coalesced requests");
        n == 0
    }

    pub(super) fn main() -> ExitCode {
        println!(
            "coalescer benchmarks: {} on {} cores",
            std::env::consts::ARCH,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        );
        let met = ratios();
        burst();
        let idle_free = memory();
        let no_allocs = allocations();
        if met && idle_free && no_allocs {
            ExitCode::SUCCESS
        } else {
            println!("(some goals not met)");
            ExitCode::FAILURE
        }
    }
}
