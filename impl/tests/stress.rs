//! Stress with fault injection, checked by the spec's history oracle
//! (`coalescer_spec::check`): many tasks or threads × many keys, a random
//! mix of `request` and `request_and_wait`, cycles that panic at random (when
//! called, before and after an `.await`, and in the future's `Drop`), and a
//! shutdown at a random moment while all of this runs. Every run records its
//! history and the oracle checks every invariant on it.
//!
//! `cargo test` runs 100 000 requests per front end; the `#[ignore]`d long
//! runs do 10 000 000 (`cargo test --release --test stress -- --ignored
//! --nocapture`; results in docs/reliability.md).
#![cfg(not(loom))]

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::SeqCst};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use coalescer::{blocking, Admission, Closed, Coalescer};
use coalescer_spec::{check, Answer, Event, History, Recorder};

mod common;
use common::{quiet_injected_panics, INJECTED};

/// splitmix64.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a run is made of.
#[derive(Debug, Clone, Copy)]
struct Shape {
    keys: u64,
    workers: u64,
    requests_per_worker: u64,
    seed: u64,
}

/// How a cycle fails, drawn per cycle.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    None,
    /// Panics when the cycle function is called.
    AtCall,
    /// Panics before its `.await`.
    BeforeAwait,
    /// Panics after its `.await`.
    AfterAwait,
    /// Completes, then panics when its future is dropped.
    InDrop,
}

fn fault(draw: u64) -> Fault {
    match draw % 100 {
        0..=1 => Fault::AtCall,
        2..=4 => Fault::BeforeAwait,
        5..=7 => Fault::AfterAwait,
        8..=9 => Fault::InDrop,
        _ => Fault::None,
    }
}

/// What every run shares: the history, the versions, the draws.
struct World {
    tape: Recorder<u64>,
    versions: Vec<AtomicU64>,
    draws: AtomicU64,
    next_request: AtomicU64,
}

impl World {
    fn new(shape: Shape) -> Arc<Self> {
        Arc::new(World {
            tape: Recorder::new(),
            versions: (0..shape.keys).map(|_| AtomicU64::new(0)).collect(),
            draws: AtomicU64::new(shape.seed),
            next_request: AtomicU64::new(0),
        })
    }

    /// A requester writes a new version of `key`, then records the
    /// invocation; returns the request's name.
    fn invoke(&self, key: u64, wait: bool) -> u64 {
        let wrote = self.versions[key as usize].fetch_add(1, SeqCst) + 1;
        let request = self.next_request.fetch_add(1, SeqCst);
        self.tape.record(Event::Invoked {
            request,
            key,
            wait,
            wrote: Some(wrote),
        });
        request
    }

    /// A plain request for `key`, made by `request`, recorded around it.
    fn request(&self, key: u64, request: impl FnOnce(u64) -> Result<Admission, Closed>) {
        let id = self.invoke(key, false);
        self.tape.record(match request(key) {
            Ok(admission) => Event::Accepted {
                request: id,
                admission,
            },
            Err(Closed) => Event::Rejected { request: id },
        });
    }

    /// A cycle of `key` begins: records what it saw, and draws its fault.
    fn begin(&self, key: u64) -> Fault {
        let saw = self.versions[key as usize].load(SeqCst);
        self.tape.record(Event::CycleBegan {
            key,
            saw: Some(saw),
        });
        fault(mix(self.draws.fetch_add(1, SeqCst)))
    }

    fn panic(&self, key: u64) -> ! {
        self.tape.record(Event::CyclePanicked { key });
        std::panic::panic_any(INJECTED)
    }

    fn check(&self, what: &str) -> History<u64> {
        let history = self.tape.history();
        if let Err(v) = check(&history) {
            let from = v.at.saturating_sub(20);
            let to = (v.at + 5).min(history.events.len());
            panic!(
                "{what}: {v}\nevents {from}..{to}: {:#?}",
                &history.events[from..to]
            );
        }
        history
    }
}

/// The async cycle's future: awaits once; may panic before or after, or in
/// `Drop` (recording the panic first, as the oracle expects).
struct Cycle {
    world: Arc<World>,
    key: u64,
    fault: Fault,
    yielded: bool,
}

impl Future for Cycle {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if !self.yielded {
            if self.fault == Fault::BeforeAwait {
                self.world.panic(self.key);
            }
            self.yielded = true;
            cx.waker().wake_by_ref();
            return Poll::Pending;
        }
        if self.fault == Fault::AfterAwait {
            self.world.panic(self.key);
        }
        if self.fault != Fault::InDrop {
            self.world.tape.record(Event::CycleEnded { key: self.key });
        }
        Poll::Ready(())
    }
}

impl Drop for Cycle {
    fn drop(&mut self) {
        if self.fault == Fault::InDrop && self.yielded && !std::thread::panicking() {
            self.world.panic(self.key);
        }
    }
}

/// One async run on a `multi_thread` runtime; returns its history.
fn run_async(shape: Shape) -> History<u64> {
    quiet_injected_panics();
    let world = World::new(shape);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (cycles, hooked) = (Arc::clone(&world), Arc::clone(&world));
        let c = Arc::new(
            Coalescer::builder()
                .panic_hook(move |report| {
                    hooked
                        .tape
                        .record(Event::PanicReported { key: *report.key() })
                })
                .build(move |key: u64| {
                    let fault = cycles.begin(key);
                    if fault == Fault::AtCall {
                        cycles.panic(key);
                    }
                    Cycle {
                        world: Arc::clone(&cycles),
                        key,
                        fault,
                        yielded: false,
                    }
                }),
        );
        let total = shape.workers * shape.requests_per_worker;
        let shutdown_after = mix(shape.seed) % total;
        let made = Arc::new(AtomicU64::new(0));
        let mut workers = tokio::task::JoinSet::new();
        for w in 0..shape.workers {
            let (c, world, made) = (Arc::clone(&c), Arc::clone(&world), Arc::clone(&made));
            let mut rng = mix(shape.seed ^ (w + 1));
            workers.spawn(async move {
                for _ in 0..shape.requests_per_worker {
                    rng = mix(rng);
                    let key = rng % shape.keys;
                    if (rng >> 32) % 20 == 0 {
                        let request = world.invoke(key, true);
                        let result = c.request_and_wait(key).await;
                        world.tape.record(Event::Waited {
                            request,
                            result: (&result).into(),
                        });
                    } else {
                        world.request(key, |key| c.request(key));
                    }
                    if made.fetch_add(1, SeqCst) == shutdown_after {
                        let (c, world) = (Arc::clone(&c), Arc::clone(&world));
                        tokio::spawn(async move {
                            world.tape.record(Event::ShutdownBegan);
                            c.shutdown().await;
                            world.tape.record(Event::ShutdownEnded);
                        });
                    }
                    if rng % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
            });
        }
        while workers.join_next().await.is_some() {}
        world.tape.record(Event::ShutdownBegan);
        c.shutdown().await;
        world.tape.record(Event::ShutdownEnded);
        assert_eq!(c.active_keys(), 0);
    });
    world.check("async stress")
}

/// One blocking run on threads; returns its history.
fn run_blocking(shape: Shape) -> History<u64> {
    quiet_injected_panics();
    let world = World::new(shape);
    let (cycles, hooked) = (Arc::clone(&world), Arc::clone(&world));
    let c = Arc::new(
        blocking::Coalescer::builder()
            .panic_hook(move |report| {
                hooked
                    .tape
                    .record(Event::PanicReported { key: *report.key() })
            })
            .build(move |key: &u64| {
                let fault = cycles.begin(*key);
                if fault != Fault::None {
                    cycles.panic(*key);
                }
                std::thread::yield_now();
                cycles.tape.record(Event::CycleEnded { key: *key });
            }),
    );
    let total = shape.workers * shape.requests_per_worker;
    let shutdown_after = mix(shape.seed) % total;
    let made = Arc::new(AtomicU64::new(0));
    std::thread::scope(|scope| {
        for w in 0..shape.workers {
            let (c, world, made) = (&c, &world, &made);
            let mut rng = mix(shape.seed ^ (w + 1));
            scope.spawn(move || {
                for _ in 0..shape.requests_per_worker {
                    rng = mix(rng);
                    let key = rng % shape.keys;
                    if (rng >> 32) % 20 == 0 {
                        let request = world.invoke(key, true);
                        let result = c.request_and_wait(key);
                        world.tape.record(Event::Waited {
                            request,
                            result: (&result).into(),
                        });
                    } else {
                        world.request(key, |key| c.request(key));
                    }
                    if made.fetch_add(1, SeqCst) == shutdown_after {
                        world.tape.record(Event::ShutdownBegan);
                        c.shutdown();
                        world.tape.record(Event::ShutdownEnded);
                    }
                }
            });
        }
    });
    world.tape.record(Event::ShutdownBegan);
    c.shutdown();
    world.tape.record(Event::ShutdownEnded);
    assert_eq!(c.active_keys(), 0);
    world.check("blocking stress")
}

/// What a history shows happened, for the report and for the test's
/// non-vacuity checks.
#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    requests: u64,
    accepted: u64,
    rejected: u64,
    waits: u64,
    waits_panicked: u64,
    cycles: u64,
    panics: u64,
}

fn tally(history: &History<u64>) -> Tally {
    let mut t = Tally::default();
    for e in &history.events {
        match e {
            Event::Invoked { .. } => t.requests += 1,
            Event::Accepted { .. } => t.accepted += 1,
            Event::Rejected { .. }
            | Event::Waited {
                result: Answer::Closed,
                ..
            } => t.rejected += 1,
            Event::Waited { result, .. } => {
                t.accepted += 1;
                t.waits += 1;
                t.waits_panicked += u64::from(*result == Answer::Panicked);
            }
            Event::CycleBegan { .. } => t.cycles += 1,
            Event::CyclePanicked { .. } => t.panics += 1,
            _ => {}
        }
    }
    t
}

fn assert_not_vacuous(t: Tally, total: u64) {
    assert_eq!(t.requests, total);
    assert!(t.rejected > 0, "the shutdown raced nothing: {t:?}");
    assert!(
        t.accepted > 0 && t.cycles < t.accepted,
        "nothing coalesced: {t:?}"
    );
    assert!(t.panics > 0 && t.waits > 0, "no faults or no waits: {t:?}");
}

const CI: Shape = Shape {
    keys: 64,
    workers: 16,
    requests_per_worker: 6_250,
    seed: 1,
};

#[test]
fn async_stress_with_faults_and_a_racing_shutdown_keeps_every_invariant() {
    let started = Instant::now();
    let t = tally(&run_async(CI));
    eprintln!("async stress: {t:?} in {:.1?}", started.elapsed());
    assert_not_vacuous(t, 100_000);
}

#[test]
fn blocking_stress_with_faults_and_a_racing_shutdown_keeps_every_invariant() {
    let started = Instant::now();
    let t = tally(&run_blocking(CI));
    eprintln!("blocking stress: {t:?} in {:.1?}", started.elapsed());
    assert_not_vacuous(t, 100_000);
}

/// 100 runs of 100 000 requests with different seeds: 10 000 000 requests.
fn long_run(front: &str, run: fn(Shape) -> History<u64>) {
    let started = Instant::now();
    let mut sum = Tally::default();
    for seed in 1..=100 {
        let t = tally(&run(Shape { seed, ..CI }));
        sum.requests += t.requests;
        sum.accepted += t.accepted;
        sum.rejected += t.rejected;
        sum.waits += t.waits;
        sum.waits_panicked += t.waits_panicked;
        sum.cycles += t.cycles;
        sum.panics += t.panics;
    }
    eprintln!(
        "{front} long run: 100 runs, {sum:?}, every history checked, in {:.1?}",
        started.elapsed()
    );
}

#[test]
#[ignore = "long run (10 000 000 requests): cargo test --release --test stress -- --ignored"]
fn async_long_run() {
    long_run("async", run_async);
}

#[test]
#[ignore = "long run (10 000 000 requests): cargo test --release --test stress -- --ignored"]
fn blocking_long_run() {
    long_run("blocking", run_blocking);
}
