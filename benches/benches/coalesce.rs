//! The coalesced request against its limit (one `fetch_or`), against the
//! Go algorithm and against a hand-rolled `DashMap` coalescer, over 1, 256
//! and 100 000 keys; request-to-start latency against a bare spawn and signal.
//! `cargo run -p coalescer-benches --release --bin summary` prints the
//! ratios from the estimates this writes.

#[cfg(not(loom))]
mod benches {
    use std::hint::black_box;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    use coalescer_benches::{on_threads, spread, string_keys, u64_keys, DashPeer, GoPort, Held};
    use criterion::Criterion;

    fn quick(c: &mut Criterion) -> criterion::BenchmarkGroup<'_, criterion::measurement::WallTime> {
        let mut g = c.benchmark_group("request");
        g.sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        g
    }

    /// One iteration = one request on each of `threads` threads.
    pub(crate) fn request(c: &mut Criterion) {
        let mut g = quick(c);
        let word = AtomicU64::new(0);
        for threads in [1, 2] {
            g.bench_function(format!("limit_fetch_or/{threads}t"), |b| {
                b.iter_custom(|iters| {
                    on_threads(threads, iters, |_, _| {
                        black_box(word.fetch_or(2, Ordering::AcqRel));
                    })
                })
            });
        }
        for n in [1usize, 256, 100_000] {
            let keys = u64_keys(n);
            let held = Held::new(&keys);
            let go = GoPort::running(&keys);
            let dash = DashPeer::running(&keys);
            let label = if n == 1 {
                "hot".to_owned()
            } else {
                n.to_string()
            };
            for threads in [1, 2] {
                g.bench_function(format!("dash_u64_{label}/{threads}t"), |b| {
                    b.iter_custom(|iters| {
                        on_threads(threads, iters, |t, i| {
                            black_box(dash.request(keys[spread(t, i, n)]));
                        })
                    })
                });
                g.bench_function(format!("ours_u64_{label}/{threads}t"), |b| {
                    b.iter_custom(|iters| {
                        on_threads(threads, iters, |t, i| {
                            let key = keys[spread(t, i, n)];
                            black_box(held.coalescer.request(key)).ok();
                        })
                    })
                });
                g.bench_function(format!("go_u64_{label}/{threads}t"), |b| {
                    b.iter_custom(|iters| {
                        on_threads(threads, iters, |t, i| {
                            black_box(go.request(&keys[spread(t, i, n)]));
                        })
                    })
                });
            }
        }
        // The same coalesced request with a policy configured but not
        // triggered: a retry policy (and fallible cycles), a concurrency
        // limit never reached, a debounce (which stamps every request).
        for n in [1usize, 256] {
            let keys = u64_keys(n);
            let label = if n == 1 {
                "hot".to_owned()
            } else {
                n.to_string()
            };
            let retrying = Held::retrying(&keys);
            let limited = Held::limited(&keys);
            let debounced = Held::debounced(&keys);
            for threads in [1, 2] {
                g.bench_function(format!("ours_u64_{label}_retry/{threads}t"), |b| {
                    b.iter_custom(|iters| {
                        on_threads(threads, iters, |t, i| {
                            let key = keys[spread(t, i, n)];
                            black_box(retrying.coalescer.request(key)).ok();
                        })
                    })
                });
                g.bench_function(format!("ours_u64_{label}_limit/{threads}t"), |b| {
                    b.iter_custom(|iters| {
                        on_threads(threads, iters, |t, i| {
                            let key = keys[spread(t, i, n)];
                            black_box(limited.coalescer.request(key)).ok();
                        })
                    })
                });
                g.bench_function(format!("ours_u64_{label}_debounce/{threads}t"), |b| {
                    b.iter_custom(|iters| {
                        on_threads(threads, iters, |t, i| {
                            let key = keys[spread(t, i, n)];
                            black_box(debounced.coalescer.request(key)).ok();
                        })
                    })
                });
            }
        }
        for n in [1usize, 256] {
            let keys = string_keys(n);
            let held = Held::new(&keys);
            let go = GoPort::running(&keys);
            let label = if n == 1 {
                "hot".to_owned()
            } else {
                n.to_string()
            };
            for threads in [1, 2] {
                g.bench_function(format!("ours_string_{label}/{threads}t"), |b| {
                    b.iter_custom(|iters| {
                        on_threads(threads, iters, |t, i| {
                            let key = keys[spread(t, i, n)].clone();
                            black_box(held.coalescer.request(key)).ok();
                        })
                    })
                });
                g.bench_function(format!("go_string_{label}/{threads}t"), |b| {
                    b.iter_custom(|iters| {
                        on_threads(threads, iters, |t, i| {
                            // The same clone as ours: requests take keys by value.
                            let key = keys[spread(t, i, n)].clone();
                            black_box(go.request(&key));
                        })
                    })
                });
            }
        }
        g.finish();
    }

    /// Request (idle key) to cycle start, against the least a runtime can
    /// do to run something: spawn it and signal back.
    pub(crate) fn latency(c: &mut Criterion) {
        let mut g = c.benchmark_group("latency");
        g.sample_size(20)
            .warm_up_time(Duration::from_millis(500))
            .measurement_time(Duration::from_secs(2));
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        g.bench_function("tokio_spawn_signal", |b| {
            b.iter(|| {
                rt.block_on(async {
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    tokio::spawn(async move {
                        let _ = tx.send(());
                    });
                    rx.await.unwrap();
                })
            })
        });
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<()>();
        let ours = rt.block_on(async move {
            coalescer::Coalescer::new(move |_key: u64| {
                let _ = tx.send(());
                std::future::ready(())
            })
        });
        let mut rx = rx;
        let next = AtomicU64::new(0);
        g.bench_function("tokio_request_to_start", |b| {
            b.iter(|| {
                rt.block_on(async {
                    // A key never used before: idle, so the request starts it.
                    ours.request(next.fetch_add(1, Ordering::Relaxed)).unwrap();
                    rx.recv().await.unwrap();
                })
            })
        });
        g.bench_function("thread_spawn_signal", |b| {
            b.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    let (tx, rx) = mpsc::channel();
                    let t = std::thread::spawn(move || tx.send(()).unwrap());
                    rx.recv().unwrap();
                    t.join().unwrap();
                }
                started.elapsed()
            })
        });
        let (tx, started_rx) = mpsc::channel::<()>();
        let tx = std::sync::Mutex::new(tx);
        let blocking = coalescer::blocking::Coalescer::new(move |_key: &u64| {
            tx.lock().unwrap().send(()).unwrap();
        });
        g.bench_function("blocking_request_to_start", |b| {
            b.iter(|| {
                blocking
                    .request(next.fetch_add(1, Ordering::Relaxed))
                    .unwrap();
                started_rx.recv().unwrap();
            })
        });
        g.finish();
    }
}

#[cfg(not(loom))]
#[allow(missing_docs, reason = "generated by criterion")]
mod group {
    criterion::criterion_group!(all, super::benches::request, super::benches::latency);
}
#[cfg(not(loom))]
use group::all;
#[cfg(not(loom))]
criterion::criterion_main!(all);

#[cfg(loom)]
fn main() {}
