//! A replica: the in-process coalescer in front of the requests, and the
//! tasks that claim due keys, run their cycles under renewed leases, and
//! complete them.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use rand::Rng;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::task::JoinSet;
use tokio_postgres::{AsyncMessage, NoTls};
use tracing::Instrument;

use crate::error::Error;
use crate::model::{Claimed, Completed, Requested};
use crate::store::{check_key, Namespace, CHANNEL};

type CycleFn =
    dyn Fn(Cycle) -> futures_util::future::BoxFuture<'static, Result<(), String>> + Send + Sync;

/// One cycle of a key, as its cycle function gets it: the key, the claim
/// (the generation it covers) and its fencing epoch.
#[derive(Debug, Clone)]
pub struct Cycle {
    key: String,
    covers: i64,
    epoch: i64,
    owner: Arc<str>,
    namespace: Namespace,
    fenced: Arc<AtomicBool>,
    /// The lease a go-again claim gets.
    lease: Duration,
    /// Whether the replica is shutting down (a completion then hands a
    /// pending key back instead of going on).
    closing: watch::Receiver<bool>,
    /// A completion this cycle committed itself (`complete_in`).
    completed: Arc<Mutex<Option<Completed>>>,
}

impl Cycle {
    /// The key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The generation this cycle covers: every request whose
    /// [`Requested::generation`] is at or below it.
    pub fn covers(&self) -> i64 {
        self.covers
    }

    /// The fencing epoch: higher than every earlier cycle's of any key.
    /// An external resource that remembers the highest epoch it has seen
    /// per key, and rejects a lower one, never accepts a superseded cycle's
    /// effects.
    pub fn epoch(&self) -> i64 {
        self.epoch
    }

    /// The replica running it.
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// The namespace of its key.
    pub fn namespace(&self) -> &Namespace {
        &self.namespace
    }

    /// Whether a lease renewal found the claim gone (taken over): the cycle
    /// should stop; its completion will be rejected. `false` is no promise:
    /// only [`fence_in`](Self::fence_in) is.
    pub fn is_fenced(&self) -> bool {
        // ORDERING: Relaxed; a hint, paired with nothing (the fence is the
        // database's).
        self.fenced.load(Relaxed)
    }

    /// In the caller's transaction: [`Namespace::fence_in`] for this cycle.
    /// Effects that transaction commits after `Ok` were committed while this
    /// cycle owned the key.
    ///
    /// # Errors
    ///
    /// [`Error::Fenced`] if a later claim owns the key; [`Error::Db`].
    pub async fn fence_in<C: tokio_postgres::GenericClient + Sync>(
        &self,
        client: &C,
    ) -> Result<(), Error> {
        self.namespace
            .fence_in(client, &self.key, &self.owner, self.epoch)
            .await
    }

    /// Completes this cycle inside `tx` and commits it: the effects the
    /// transaction holds commit with the completion, or neither does. The
    /// replica then goes on from that completion (again, handed back or
    /// idle) instead of completing the cycle itself when it returns.
    ///
    /// # Errors
    ///
    /// [`Error::Fenced`] if a later claim owns the key: the transaction is
    /// rolled back, its effects with it. [`Error::Db`] from the completion
    /// (rolled back) or the commit (unknown: if it did commit, the
    /// replica's own completion finds the claim gone, and a go-again claim
    /// it made is taken over after its lease — at least once).
    pub async fn complete_in(&self, tx: tokio_postgres::Transaction<'_>) -> Result<(), Error> {
        let go_on = !*self.closing.borrow();
        let done = self
            .namespace
            .complete_in(&tx, &self.key, &self.owner, self.epoch, self.lease, go_on)
            .await?;
        tx.commit().await?;
        *self.completed.lock().expect("completion lock") = Some(done);
        Ok(())
    }
}

/// Counts of what a replica did (monotonic).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReplicaStats {
    /// Cycles that began.
    pub cycles: u64,
    /// Cycles that returned an error or panicked (each is retried, under the
    /// same claim, after a backoff).
    pub failures: u64,
    /// Claims that took a key over from an owner whose lease had expired.
    pub takeovers: u64,
    /// Completions rejected because a later claim owned the key.
    pub fenced: u64,
    /// Keys handed back, pending, at shutdown (another replica runs them).
    pub handed_back: u64,
}

/// What [`Replica::shutdown`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Keys handed back pending (their requests came during the last cycle
    /// this replica ran), or abandoned while waiting to retry.
    pub handed_back: u64,
}

#[derive(Default)]
struct Counters {
    cycles: AtomicU64,
    failures: AtomicU64,
    takeovers: AtomicU64,
    fenced: AtomicU64,
    handed_back: AtomicU64,
}

/// Builds a [`Replica`].
#[derive(Debug, Clone)]
pub struct ReplicaBuilder {
    namespace: Namespace,
    name: String,
    lease: Duration,
    poll: Duration,
    concurrency: usize,
    retry_first: Duration,
    retry_max: Duration,
}

impl ReplicaBuilder {
    /// A name for the owner id (which adds the process id and a random
    /// part, so a restarted process never mistakes its predecessor's claims
    /// for its own). Default `replica`.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// How long a claim holds without renewal (default 30 s); renewed every
    /// third of it. A crashed replica's keys are taken over after this.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(Duration::from_millis(10));
        self
    }

    /// The mean interval of the poll for due keys (default 5 s, jittered
    /// by ±50 %): lease expiry sends no notification, and a notification
    /// can be lost with its connection.
    pub fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll.max(Duration::from_millis(1));
        self
    }

    /// How many cycles this replica runs at once (default 16).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// The backoff of a failed cycle's retries: `first`, doubling up to
    /// `max` (default 100 ms to 30 s). The claim is kept meanwhile.
    pub fn retry(mut self, first: Duration, max: Duration) -> Self {
        self.retry_first = first;
        self.retry_max = max.max(first);
        self
    }

    /// Starts the replica on the current tokio runtime: its LISTEN
    /// connection, its claim loop and its lease renewals. `cycle` is called
    /// for each cycle; an `Err` or a panic is retried after the backoff.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime.
    pub fn start<F, Fut, E>(self, cycle: F) -> Replica
    where
        F: Fn(Cycle) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: std::fmt::Display,
    {
        let cycle: Arc<CycleFn> =
            Arc::new(move |c| cycle(c).map(|r| r.map_err(|e| e.to_string())).boxed());
        let owner: Arc<str> = format!(
            "{}/{}/{:016x}",
            self.name,
            std::process::id(),
            rand::rng().random::<u64>()
        )
        .into();
        let inner = Arc::new(Inner {
            namespace: self.namespace.clone(),
            owner,
            lease: self.lease,
            poll: self.poll,
            retry_first: self.retry_first,
            retry_max: self.retry_max,
            cycle,
            permits: Arc::new(Semaphore::new(self.concurrency)),
            wake: Notify::new(),
            closing: watch::channel(false).0,
            running: Mutex::new(HashMap::new()),
            runs: Mutex::new(JoinSet::new()),
            counters: Counters::default(),
        });
        let namespace = self.namespace;
        let front = coalescer::Coalescer::builder()
            .name("coalescer-postgres requests")
            .build(move |key: String| {
                let namespace = namespace.clone();
                async move { namespace.request(&key).await }
            });
        let claims = tokio::spawn(Arc::clone(&inner).claim_loop());
        let mut services = JoinSet::new();
        services.spawn(Arc::clone(&inner).renew_loop());
        services.spawn(Arc::clone(&inner).listen_loop());
        Replica {
            inner,
            front,
            tasks: tokio::sync::Mutex::new(Some(Tasks { claims, services })),
        }
    }
}

/// One replica of a service: requests go to the shared rows through an
/// in-process coalescer (so this process has at most one request statement
/// per key in flight), and due keys are claimed and run here under leases.
///
/// Dropped without [`shutdown`](Self::shutdown), its tasks are aborted and
/// its claims left to expire: other replicas take the keys over after the
/// lease, as after a crash.
pub struct Replica {
    inner: Arc<Inner>,
    front: coalescer::Coalescer<String, std::hash::RandomState, Result<Requested, Error>>,
    tasks: tokio::sync::Mutex<Option<Tasks>>,
}

/// The replica's own tasks (the runs of claimed keys are in `Inner::runs`).
struct Tasks {
    claims: tokio::task::JoinHandle<()>,
    /// The lease renewals and the LISTEN connection.
    services: JoinSet<()>,
}

impl Drop for Tasks {
    fn drop(&mut self) {
        self.claims.abort();
    }
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("owner", &self.inner.owner)
            .field("namespace", &self.inner.namespace.name())
            .finish_non_exhaustive()
    }
}

impl Replica {
    /// Builds a replica of `namespace`'s keys.
    pub fn builder(namespace: Namespace) -> ReplicaBuilder {
        ReplicaBuilder {
            namespace,
            name: "replica".to_owned(),
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(5),
            concurrency: 16,
            retry_first: Duration::from_millis(100),
            retry_max: Duration::from_secs(30),
        }
    }

    /// This replica's owner id, as the rows record it.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Requests a cycle of `key`: returns once the request is committed
    /// (durable, and covered by a cycle that claims it, on whichever replica).
    /// Concurrent requests for a key share one statement; the statement
    /// that answers a request was sent after it was made.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidKey`] (nothing sent); [`Error::Closed`] once
    /// shutdown began; [`Error::Db`] or [`Error::Pool`] from the statement
    /// (its outcome unknown; sending again is safe).
    pub async fn request(&self, key: &str) -> Result<Requested, Error> {
        check_key(key)?;
        match self.front.request_and_wait(key.to_owned()).await {
            Ok(requested) => Ok(requested),
            Err(coalescer::RunError::Failed(e)) => Err((*e).clone()),
            Err(_) => Err(Error::Closed),
        }
    }

    /// Requests a cycle of `key` and waits until a cycle that covers the
    /// request has completed, on whichever replica ([`request`](Self::request),
    /// then [`Namespace::wait_covered`]). A cycle after a crash covers it
    /// too: the wait is for coverage, at least once.
    ///
    /// # Errors
    ///
    /// As [`request`](Self::request), and [`Error::Db`] or [`Error::Pool`]
    /// from a poll (the request was committed: waiting again is safe).
    pub async fn request_and_wait(&self, key: &str) -> Result<Requested, Error> {
        let requested = self.request(key).await?;
        self.inner
            .namespace
            .wait_covered(key, requested.generation)
            .await?;
        Ok(requested)
    }

    /// Requests a cycle of `key` in the caller's transaction: atomic with
    /// the caller's own changes ([`Namespace::request_in`]).
    ///
    /// # Errors
    ///
    /// As [`Namespace::request_in`].
    pub async fn request_in<C: tokio_postgres::GenericClient + Sync>(
        &self,
        client: &C,
        key: &str,
    ) -> Result<Requested, Error> {
        self.inner.namespace.request_in(client, key).await
    }

    /// What this replica has done so far.
    pub fn stats(&self) -> ReplicaStats {
        let c = &self.inner.counters;
        // ORDERING: Relaxed, counters only (observation).
        ReplicaStats {
            cycles: c.cycles.load(Relaxed),
            failures: c.failures.load(Relaxed),
            takeovers: c.takeovers.load(Relaxed),
            fenced: c.fenced.load(Relaxed),
            handed_back: c.handed_back.load(Relaxed),
        }
    }

    /// Shuts down gracefully: rejects later requests, sends those already
    /// made, stops claiming, lets running cycles end and completes them
    /// without going again — a key requested meanwhile is handed back,
    /// pending, and another replica is notified — then stops its tasks.
    /// Idempotent.
    pub async fn shutdown(&self) -> ShutdownReport {
        let mut tasks = self.tasks.lock().await;
        let Some(mut tasks) = tasks.take() else {
            return ShutdownReport { handed_back: 0 };
        };
        // ORDERING: Relaxed; a counter (observation only), pairs with nothing.
        let before = self.inner.counters.handed_back.load(Relaxed);
        // Closing first: a cycle that ends from now on hands its key back
        // instead of going on, while the requests already made are sent.
        self.inner.closing.send_replace(true);
        self.front.shutdown().await;
        // The claim loop ends first (it starts runs for what it has just
        // claimed, which complete without going on), then every run.
        let _ = (&mut tasks.claims).await;
        loop {
            let runs = std::mem::take(&mut *self.inner.runs.lock().expect("runs lock"));
            if runs.is_empty() {
                break;
            }
            runs.join_all().await;
        }
        tasks.services.abort_all();
        while tasks.services.join_next().await.is_some() {}
        // ORDERING: Relaxed, as above; the runs that counted were joined.
        ShutdownReport {
            handed_back: self.inner.counters.handed_back.load(Relaxed) - before,
        }
    }
}

struct Inner {
    namespace: Namespace,
    owner: Arc<str>,
    lease: Duration,
    poll: Duration,
    retry_first: Duration,
    retry_max: Duration,
    cycle: Arc<CycleFn>,
    /// One per cycle that may run at once.
    permits: Arc<Semaphore>,
    /// Something may be due: a notification, a reconnect, a freed permit.
    wake: Notify,
    /// Whether shutdown began (wakes the claim loop's and the runs' sleeps).
    closing: watch::Sender<bool>,
    /// The keys this replica runs, with their epoch and fence flag.
    running: Mutex<HashMap<String, (i64, Arc<AtomicBool>)>>,
    /// The runs of claimed keys.
    runs: Mutex<JoinSet<()>>,
    counters: Counters,
}

impl Inner {
    fn closing(&self) -> bool {
        *self.closing.borrow()
    }

    /// Resolves once shutdown has begun (at once if it has).
    async fn closed(&self) {
        let mut closing = self.closing.subscribe();
        let _ = closing.wait_for(|c| *c).await;
    }

    /// The poll interval, jittered by ±50 %.
    fn jittered_poll(&self) -> Duration {
        self.poll.mul_f64(rand::rng().random_range(0.5..1.5))
    }

    /// Waits for a wake-up, the poll, or shutdown; then claims as many due
    /// keys as there are free permits and starts their runs.
    async fn claim_loop(self: Arc<Self>) {
        loop {
            let poll = self.jittered_poll();
            let polled = tokio::select! {
                () = self.wake.notified() => false,
                () = tokio::time::sleep(poll) => true,
                () = self.closed() => false,
            };
            if self.closing() {
                return;
            }
            if polled {
                // Rows a crashed replica left idle (it died between its
                // completion and its sweep).
                if let Err(e) = self.namespace.sweep(None).await {
                    tracing::warn!(target: "coalescer_postgres", error = %e, "sweep failed");
                }
            }
            self.claim_all().await;
        }
    }

    async fn claim_all(self: &Arc<Self>) {
        loop {
            let free = self.permits.available_permits();
            if free == 0 || self.closing() {
                return;
            }
            let running: Vec<String> = self
                .running
                .lock()
                .expect("running lock")
                .keys()
                .cloned()
                .collect();
            let claims = match self
                .namespace
                .claim(&self.owner, self.lease, free, &running)
                .await
            {
                Ok(claims) => claims,
                Err(e) => {
                    tracing::warn!(target: "coalescer_postgres", error = %e, "claim failed");
                    return;
                }
            };
            let got = claims.len();
            for claim in claims {
                let Ok(permit) = Arc::clone(&self.permits).try_acquire_owned() else {
                    // Only this loop takes permits and it claimed no more
                    // than were free, so this does not happen; if it did,
                    // the claim goes back rather than running over the limit.
                    let _ = self
                        .namespace
                        .abandon(&claim.key, &self.owner, claim.epoch)
                        .await;
                    continue;
                };
                if claim.previous.is_some() {
                    // ORDERING: Relaxed; a counter (observation only), pairs with nothing.
                    self.counters.takeovers.fetch_add(1, Relaxed);
                }
                let this = Arc::clone(self);
                self.runs
                    .lock()
                    .expect("runs lock")
                    .spawn(async move { this.run(claim, permit).await });
            }
            if got < free {
                return;
            }
        }
    }

    /// Runs a claimed key's cycles until it goes idle, is handed back or is
    /// fenced.
    ///
    /// INV-17a: one task per claimed key, so this replica never runs a key's
    /// cycles side by side; INV-16b: a failed cycle is retried here, under
    /// the same claim.
    async fn run(self: Arc<Self>, claim: Claimed, permit: tokio::sync::OwnedSemaphorePermit) {
        let Claimed {
            key,
            claimed: mut covers,
            mut epoch,
            ..
        } = claim;
        let fenced = Arc::new(AtomicBool::new(false));
        self.hold(&key, epoch, &fenced);
        let mut attempt: u32 = 0;
        loop {
            let completed = Arc::new(Mutex::new(None));
            let cycle = Cycle {
                key: key.clone(),
                covers,
                epoch,
                owner: Arc::clone(&self.owner),
                namespace: self.namespace.clone(),
                fenced: Arc::clone(&fenced),
                lease: self.lease,
                closing: self.closing.subscribe(),
                completed: Arc::clone(&completed),
            };
            // ORDERING: Relaxed; a counter (observation only), pairs with nothing.
            self.counters.cycles.fetch_add(1, Relaxed);
            let span =
                tracing::info_span!(target: "coalescer_postgres", "cycle", key = %key, epoch);
            let outcome = AssertUnwindSafe((self.cycle)(cycle))
                .catch_unwind()
                .instrument(span)
                .await;
            // Completed by the cycle itself, in its own transaction: that
            // completion stands, whatever the cycle returned after it.
            let committed = completed.lock().expect("completion lock").take();
            let failed = match outcome {
                _ if committed.is_some() => None,
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e),
                Err(_) => Some("the cycle panicked".to_owned()),
            };
            if let Some(error) = failed {
                // ORDERING: Relaxed; a counter (observation only), pairs with nothing.
                self.counters.failures.fetch_add(1, Relaxed);
                attempt = attempt.saturating_add(1);
                tracing::warn!(target: "coalescer_postgres", key = %key, epoch, attempt, %error, "cycle failed");
                let backoff = self
                    .retry_first
                    .saturating_mul(1u32 << (attempt - 1).min(20))
                    .min(self.retry_max);
                let stopped = tokio::select! {
                    () = tokio::time::sleep(backoff) => false,
                    () = self.closed() => true,
                };
                // ORDERING: Relaxed; a hint (see `Cycle::is_fenced`).
                if fenced.load(Relaxed) {
                    // ORDERING: Relaxed; a counter (observation only), pairs with nothing.
                    self.counters.fenced.fetch_add(1, Relaxed);
                    break;
                }
                if stopped || self.closing() {
                    // Give the claim back: its requests stay uncovered, and
                    // another replica is notified.
                    if self
                        .namespace
                        .abandon(&key, &self.owner, epoch)
                        .await
                        .is_ok()
                    {
                        // ORDERING: Relaxed; a counter (observation only), pairs with nothing.
                        self.counters.handed_back.fetch_add(1, Relaxed);
                    }
                    break;
                }
                continue;
            }
            attempt = 0;
            let done = match committed {
                Some(done) => Some(Ok(done)),
                None => self.complete(&key, epoch).await,
            };
            match done {
                Some(Ok(done)) => match done.claimed {
                    Some(next) => {
                        covers = next;
                        epoch = done.epoch;
                        self.hold(&key, epoch, &fenced);
                    }
                    None => {
                        if done.pending {
                            // ORDERING: Relaxed; a counter (observation only), pairs with nothing.
                            self.counters.handed_back.fetch_add(1, Relaxed);
                        } else if let Err(e) = self.namespace.sweep(Some(&key)).await {
                            tracing::warn!(target: "coalescer_postgres", error = %e, "sweep failed");
                        }
                        break;
                    }
                },
                Some(Err(())) => {
                    // ORDERING: Relaxed; a counter (observation only), pairs with nothing.
                    self.counters.fenced.fetch_add(1, Relaxed);
                    break;
                }
                // Unknown: the lease expires and a claim (this replica's
                // too, once the key is no longer running here) re-runs it.
                None => break,
            }
        }
        self.release(&key, &fenced);
        drop(permit);
        self.wake.notify_one();
    }

    /// Completes `epoch` on `key`, going on unless shutting down. Retries a
    /// failed statement a few times: a completion that did apply makes the
    /// retry find the claim gone (`Err`), which is then the same as fenced
    /// for this replica: the key is another claim's, or idle, or pending.
    /// `None`: it kept failing.
    async fn complete(&self, key: &str, epoch: i64) -> Option<Result<Completed, ()>> {
        let mut delay = Duration::from_millis(50);
        for _ in 0..5 {
            match self
                .namespace
                .complete(key, &self.owner, epoch, self.lease, !self.closing())
                .await
            {
                Ok(done) => return Some(Ok(done)),
                Err(Error::Fenced) => return Some(Err(())),
                Err(e) => {
                    tracing::warn!(target: "coalescer_postgres", key, epoch, error = %e, "completion failed; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        None
    }

    fn hold(&self, key: &str, epoch: i64, fenced: &Arc<AtomicBool>) {
        self.running
            .lock()
            .expect("running lock")
            .insert(key.to_owned(), (epoch, Arc::clone(fenced)));
    }

    fn release(&self, key: &str, fenced: &Arc<AtomicBool>) {
        let mut running = self.running.lock().expect("running lock");
        if running
            .get(key)
            .is_some_and(|(_, f)| Arc::ptr_eq(f, fenced))
        {
            running.remove(key);
        }
    }

    /// Renews every running cycle's lease, in one statement, every third of
    /// the lease; a cycle whose claim is gone is told (`Cycle::is_fenced`).
    async fn renew_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(self.lease / 3).await;
            let held: Vec<(String, i64, Arc<AtomicBool>)> = self
                .running
                .lock()
                .expect("running lock")
                .iter()
                .map(|(k, (e, f))| (k.clone(), *e, Arc::clone(f)))
                .collect();
            if held.is_empty() {
                continue;
            }
            let pairs: Vec<(String, i64)> = held.iter().map(|(k, e, _)| (k.clone(), *e)).collect();
            match self.namespace.renew(&self.owner, &pairs, self.lease).await {
                Ok(renewed) => {
                    for (key, epoch, flag) in &held {
                        if !renewed.contains(key) {
                            // Still ours at a later epoch? Then the run moved
                            // on (went again) between the snapshot and now.
                            let moved = self
                                .running
                                .lock()
                                .expect("running lock")
                                .get(key)
                                .is_some_and(|(e, _)| e != epoch);
                            if !moved {
                                // ORDERING: Relaxed; a hint.
                                flag.store(true, Relaxed);
                            }
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(target: "coalescer_postgres", error = %e, "lease renewal failed");
                }
            }
        }
    }

    /// Keeps a LISTEN connection open, waking the claim loop on each
    /// notification for this namespace and on every (re)connect, when
    /// notifications may have been missed.
    async fn listen_loop(self: Arc<Self>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut config = self.namespace.store().config().clone();
            config.application_name(format!("coalescer-postgres listen {}", self.owner));
            match config.connect(NoTls).await {
                Ok((client, mut connection)) => {
                    let this = Arc::clone(&self);
                    let name = self.namespace.name().to_owned();
                    let driver = tokio::spawn(async move {
                        let mut messages =
                            futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                        while let Some(message) = messages.next().await {
                            match message {
                                Ok(AsyncMessage::Notification(n)) if n.payload() == name => {
                                    this.wake.notify_one();
                                }
                                Ok(_) => {}
                                Err(_) => break,
                            }
                        }
                    });
                    // `CHANNEL` is a constant identifier of this crate.
                    if client
                        .batch_execute(&format!("LISTEN {CHANNEL}"))
                        .await
                        .is_ok()
                    {
                        backoff = Duration::from_millis(100);
                        self.wake.notify_one();
                        let _ = driver.await;
                    } else {
                        driver.abort();
                    }
                    drop(client);
                }
                Err(e) => {
                    tracing::warn!(target: "coalescer_postgres", error = %e, "LISTEN connection failed");
                }
            }
            let jitter = rand::rng().random_range(0.5..1.5);
            tokio::time::sleep(backoff.mul_f64(jitter)).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }
}
