//! The replicas protocol of `coalescer-postgres` as a stateright actor
//! model: a database actor that applies the row transitions of
//! `postgres/src/model.rs` (the very file the differential test checks
//! against the SQL), replicas that claim, run, renew and complete one key, a
//! client that makes requests, and a resource that receives the cycles'
//! effects. The network loses and reorders messages (a lost reply, a lost
//! notification, a paused replica whose messages arrive late), the
//! database's clock steps (leases expire), and one actor may crash and
//! recover (a replica with a new owner id; the database with its durable
//! state).
//!
//! Besides the protocol, three designs the peers use, each a
//! [`Design`] the checker refutes with a trace: going idle in two statements
//! (read pending, then clear the owner), effects the resource accepts
//! without looking at the epoch, and an advisory lock with no pending state.

use std::borrow::Cow;
use std::fmt::Write as _;

use stateright::actor::{Actor, ActorModel, ActorModelState, Id, LossyNetwork, Network, Out};
use stateright::{Checker, Expectation, Model};

/// The row transitions: the file `postgres/src/model.rs` itself.
#[path = "../../postgres/src/model.rs"]
#[allow(dead_code, reason = "the model uses the steps the replicas take")]
pub mod row;

use row::Table;

/// The one key of the model.
const KEY: &str = "k";
/// A lease lasts one tick past the tick it was granted or renewed at.
const LEASE: u64 = 1;

/// What the replicas and the resource do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Design {
    /// `coalescer-postgres`: completion and go-again in one statement,
    /// effects fenced by epoch.
    Protocol,
    /// A replica reads "anything pending?" in one statement and clears its
    /// ownership (and the pending requests with it) in a second one.
    TwoStepIdle,
    /// The resource accepts every effect, whatever its epoch.
    Unfenced,
    /// An advisory lock instead of a claim: no pending state (a request while
    /// the lock is held is skipped, as unique jobs skip it) and no expiry.
    Advisory,
}

/// The model's bounds and design.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Replicas {
    /// What is checked.
    pub design: Design,
    /// Replica actors.
    pub replicas: usize,
    /// Requests the client makes.
    pub requests: u8,
    /// The database's clock stops here.
    pub max_now: u64,
    /// Whether replica r0 may crash once (and come back as a new process,
    /// with a new owner id; what it had sent may still arrive).
    pub crash: bool,
    /// Whether the network loses messages.
    pub lossy: bool,
    /// The most messages in flight at once. A bound, not a rule of the
    /// protocol: a replica's timers may resend without end, and the network
    /// counts every copy, so without it the state space is infinite.
    pub max_in_flight: usize,
}

impl Replicas {
    /// The protocol at its default bounds: two replicas, two requests, a
    /// lossy network, one crash, leases that can expire.
    pub fn protocol() -> Self {
        Replicas {
            design: Design::Protocol,
            replicas: 2,
            requests: 2,
            max_now: 3,
            crash: true,
            lossy: true,
            max_in_flight: 3,
        }
    }

    /// `design` at bounds small enough for its counterexample to come
    /// quickly.
    pub fn refuted(design: Design) -> Self {
        Replicas {
            design,
            crash: false,
            lossy: false,
            ..Replicas::protocol()
        }
    }
}

/// Messages.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Msg {
    /// Client → database.
    Request,
    /// Database → client: the request's generation.
    Requested(i64),
    /// Database → replicas: the key has no owner and is due.
    Notify,
    /// Replica → database.
    Claim(String),
    /// Database → the claiming owner: the claim's generation and epoch, if
    /// it got one.
    Claimed(String, Option<(i64, i64)>),
    /// Replica → database: renew `epoch`'s lease.
    Renew(String, i64),
    /// Replica → resource: the cycle of `epoch`'s effect.
    Effect(i64),
    /// Resource → replica: effect received (accepted or refused).
    EffectDone(i64),
    /// Replica → database: complete `epoch` (and go on).
    Complete(String, i64),
    /// Database → replica, for the completion of the first epoch: `None`
    /// fenced; else the next claim and epoch if it goes on.
    Completed(i64, Option<(Option<i64>, i64)>),
    /// Replica → database: remove the row if idle.
    Sweep,
    /// [`Design::TwoStepIdle`]: "anything pending beyond my claim?"
    ReadPending(String, i64),
    /// The answer, for the epoch asked about.
    Pending(i64, bool),
    /// [`Design::TwoStepIdle`]: clear ownership and pending.
    GoIdle(String, i64),
}

/// Timers.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Timer {
    /// Database: the clock steps.
    Tick,
    /// Replica: the jittered poll (also resends a request whose reply is
    /// overdue); client: its next request.
    Poll,
    /// Replica: renew the lease.
    Renew,
    /// Replica r0 (with [`Replicas::crash`]): it crashes, once.
    Crash,
}

/// Where a replica is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Nothing claimed.
    Idle,
    /// A claim sent, no answer yet.
    Claiming,
    /// Its cycle of `epoch` sent its effect.
    Effecting(i64),
    /// Its cycle's completion sent.
    Completing(i64),
    /// [`Design::TwoStepIdle`]: the pending read sent.
    Reading(i64),
    /// [`Design::TwoStepIdle`]: the go-idle sent.
    Releasing(i64),
}

/// The database: the rows, the clock, and ghost history for the properties.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Db {
    /// The rows and the sequence (`postgres/src/model.rs`).
    pub table: Table,
    /// The clock.
    pub now: u64,
    /// Ghost: every committed request's generation.
    pub committed: Vec<i64>,
    /// Ghost: every claim (a go-again too): its epoch, generation, and the
    /// row's `covered` before it.
    pub claims: Vec<(i64, i64, i64)>,
    /// [`Design::Advisory`]: the lock's holder.
    pub lock: Option<String>,
}

/// An actor's state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum State {
    /// The database.
    Db(Db),
    /// The resource: the epochs whose effects it accepted, in order.
    Resource(Vec<i64>),
    /// The client: requests sent so far.
    Client(u8),
    /// A replica: its incarnation (a new owner id after each crash) and
    /// phase.
    Replica(u8, Phase),
}

/// The actors: database 0, resource 1, client 2, replicas from 3.
#[derive(Debug, Clone)]
pub enum Node {
    /// The database, with the number of replicas (to notify them all).
    Db(Design, usize),
    /// The resource.
    Resource(Design),
    /// The client.
    Client(u8),
    /// A replica, and whether it crashes once.
    Replica(Design, bool),
}

const DB: usize = 0;
const RESOURCE: usize = 1;
const FIRST_REPLICA: usize = 3;

fn to(actor: usize) -> Id {
    Id::from(actor)
}

fn owner(id: Id, incarnation: u8) -> String {
    format!("r{}.{}", usize::from(id) - FIRST_REPLICA, incarnation)
}

fn replicas(n: usize) -> Vec<Id> {
    (FIRST_REPLICA..FIRST_REPLICA + n).map(Id::from).collect()
}

fn timer_range() -> std::ops::Range<std::time::Duration> {
    stateright::actor::model_timeout()
}

impl Actor for Node {
    type Msg = Msg;
    type Timer = Timer;
    type State = State;
    /// The database's state is durable; a replica keeps its incarnation.
    type Storage = State;
    type Random = ();

    fn on_start(&self, id: Id, storage: &Option<State>, o: &mut Out<Self>) -> State {
        match self {
            Node::Db(..) => {
                o.set_timer(Timer::Tick, timer_range());
                storage.clone().unwrap_or(State::Db(Db {
                    table: Table::default(),
                    now: 0,
                    committed: Vec::new(),
                    claims: Vec::new(),
                    lock: None,
                }))
            }
            Node::Resource(_) => storage.clone().unwrap_or(State::Resource(Vec::new())),
            Node::Client(_) => {
                o.set_timer(Timer::Poll, timer_range());
                storage.clone().unwrap_or(State::Client(0))
            }
            Node::Replica(_, crashes) => {
                o.set_timer(Timer::Poll, timer_range());
                o.set_timer(Timer::Renew, timer_range());
                if *crashes {
                    o.set_timer(Timer::Crash, timer_range());
                }
                // A recovered replica is a new process: a new owner id.
                let incarnation = match storage {
                    Some(State::Replica(i, _)) => i + 1,
                    _ => 0,
                };
                let state = State::Replica(incarnation, Phase::Idle);
                o.save(state.clone());
                let _ = id;
                state
            }
        }
    }

    fn on_msg(&self, id: Id, state: &mut Cow<State>, src: Id, msg: Msg, o: &mut Out<Self>) {
        match self {
            Node::Db(design, n) => db_msg(*design, *n, state, src, msg, o),
            Node::Resource(design) => {
                if let Msg::Effect(epoch) = msg {
                    let State::Resource(accepted) = state.to_mut() else {
                        return;
                    };
                    let last = accepted.last().copied().unwrap_or(0);
                    let accept = match design {
                        Design::Unfenced => true,
                        _ => epoch >= last,
                    };
                    if accept && epoch != last {
                        accepted.push(epoch);
                    }
                    let saved = state.clone().into_owned();
                    o.save(saved);
                    o.send(src, Msg::EffectDone(epoch));
                }
            }
            // The reply to a request: taken (a message nobody takes would
            // stay in the network for ever, stateright skipping no-ops).
            Node::Client(_) => o.save(state.clone().into_owned()),
            Node::Replica(design, _) => replica_msg(*design, id, state, msg, o),
        }
    }

    fn on_timeout(&self, id: Id, state: &mut Cow<State>, timer: &Timer, o: &mut Out<Self>) {
        match (self, timer) {
            (Node::Db(..), Timer::Tick) => {
                let State::Db(db) = state.to_mut() else {
                    return;
                };
                db.now += 1;
                o.set_timer(Timer::Tick, timer_range());
                o.save(State::Db(db.clone()));
            }
            (Node::Client(limit), Timer::Poll) => {
                let State::Client(sent) = state.to_mut() else {
                    return;
                };
                if *sent < *limit {
                    *sent += 1;
                    o.send(to(DB), Msg::Request);
                    o.set_timer(Timer::Poll, timer_range());
                }
                o.save(state.clone().into_owned());
            }
            (Node::Replica(..), Timer::Poll) => {
                o.set_timer(Timer::Poll, timer_range());
                let State::Replica(incarnation, phase) = state.as_ref() else {
                    return;
                };
                let me = owner(id, *incarnation);
                match phase.clone() {
                    // Claim on the poll; resend an overdue claim (its reply
                    // may be lost: then the row is ours until the lease
                    // expires, and this claim finds nothing).
                    Phase::Idle | Phase::Claiming => {
                        o.send(to(DB), Msg::Claim(me));
                        set_phase(state, Phase::Claiming);
                    }
                    Phase::Effecting(epoch) => o.send(to(RESOURCE), Msg::Effect(epoch)),
                    Phase::Completing(epoch) => o.send(to(DB), Msg::Complete(me, epoch)),
                    Phase::Reading(epoch) => o.send(to(DB), Msg::ReadPending(me, epoch)),
                    Phase::Releasing(epoch) => o.send(to(DB), Msg::GoIdle(me, epoch)),
                }
            }
            (Node::Replica(..), Timer::Crash) => {
                // The process dies and a new one starts: all it knew is gone,
                // and it claims under a new owner id. Its timers go on (the
                // new process has the same ones); this one does not fire
                // again.
                if let State::Replica(0, _) = state.as_ref() {
                    *state.to_mut() = State::Replica(1, Phase::Idle);
                }
            }
            (Node::Replica(..), Timer::Renew) => {
                o.set_timer(Timer::Renew, timer_range());
                let State::Replica(incarnation, phase) = state.as_ref() else {
                    return;
                };
                let epoch = match phase {
                    Phase::Effecting(e)
                    | Phase::Completing(e)
                    | Phase::Reading(e)
                    | Phase::Releasing(e) => *e,
                    Phase::Idle | Phase::Claiming => return,
                };
                o.send(to(DB), Msg::Renew(owner(id, *incarnation), epoch));
            }
            _ => {}
        }
    }
}

fn set_phase(state: &mut Cow<State>, phase: Phase) {
    if let State::Replica(_, p) = state.to_mut() {
        *p = phase;
    }
}

fn db_msg(design: Design, n: usize, state: &mut Cow<State>, src: Id, msg: Msg, o: &mut Out<Node>) {
    let State::Db(db) = state.to_mut() else {
        return;
    };
    let notify = |o: &mut Out<Node>, n: usize| o.broadcast(&replicas(n), &Msg::Notify);
    match msg {
        Msg::Request => {
            if design == Design::Advisory && db.lock.is_some() {
                // A unique job is running: the request is skipped (and
                // acknowledged). Its generation is drawn all the same.
                db.table.seq += 1;
                let generation = db.table.seq;
                db.committed.push(generation);
                o.send(src, Msg::Requested(generation));
            } else {
                let requested = db.table.request(KEY);
                db.committed.push(requested.generation);
                o.send(src, Msg::Requested(requested.generation));
                if requested.notified {
                    notify(o, n);
                }
            }
        }
        Msg::Claim(owner) => {
            let covered = db.table.rows.get(KEY).map_or(0, |r| r.covered);
            let granted = if design == Design::Advisory {
                if db.lock.is_some() {
                    None
                } else {
                    // The lock is taken whatever is pending; the replica then
                    // runs what it finds.
                    let claims = db.table.claim(&owner, db.now, LEASE, 1, &[]);
                    let claim = claims.into_iter().next();
                    if claim.is_some() {
                        db.lock = Some(owner.clone());
                    }
                    claim
                }
            } else {
                // A replica claims only when it runs nothing: `running` is
                // empty.
                db.table
                    .claim(&owner, db.now, LEASE, 1, &[])
                    .into_iter()
                    .next()
            };
            if let Some(c) = &granted {
                db.claims.push((c.epoch, c.claimed, covered));
            }
            o.send(
                src,
                Msg::Claimed(owner, granted.map(|c| (c.claimed, c.epoch))),
            );
        }
        Msg::Renew(owner, epoch) => {
            db.table
                .renew(&owner, &[(KEY.to_owned(), epoch)], db.now, LEASE);
        }
        Msg::Complete(owner, epoch) => {
            let go_on = design != Design::Advisory;
            let done = db.table.complete(KEY, &owner, epoch, db.now, LEASE, go_on);
            if let Some(d) = &done {
                if let Some(claimed) = d.claimed {
                    let covered = db.table.rows[KEY].covered;
                    db.claims.push((d.epoch, claimed, covered));
                }
                if design == Design::Advisory && db.lock.as_deref() == Some(&owner) {
                    db.lock = None;
                }
                if d.notified {
                    notify(o, n);
                }
            }
            o.send(
                src,
                Msg::Completed(epoch, done.map(|d| (d.claimed, d.epoch))),
            );
        }
        Msg::Sweep => {
            db.table.sweep(Some(KEY));
        }
        Msg::ReadPending(owner, epoch) => {
            let pending = db.table.fence(KEY, &owner, epoch)
                && db.table.rows[KEY].requested > db.table.rows[KEY].claimed.unwrap_or(0);
            o.send(src, Msg::Pending(epoch, pending));
        }
        Msg::GoIdle(owner, epoch) => {
            // The second statement: it believes nothing is pending, so it
            // clears ownership and marks every request covered.
            let held = db.table.fence(KEY, &owner, epoch);
            if held {
                let row = db.table.rows.get_mut(KEY).expect("held");
                row.covered = row.requested;
                row.since = None;
                row.after = None;
                row.claimed = None;
                row.owner = None;
                row.lease_until = None;
            }
            let current = db.table.rows.get(KEY).map_or(epoch, |r| r.epoch);
            o.send(src, Msg::Completed(epoch, held.then_some((None, current))));
        }
        _ => {}
    }
    let saved = State::Db(db.clone());
    o.save(saved);
}

fn replica_msg(design: Design, id: Id, state: &mut Cow<State>, msg: Msg, o: &mut Out<Node>) {
    let State::Replica(incarnation, phase) = state.as_ref() else {
        return;
    };
    let me = owner(id, *incarnation);
    let phase = phase.clone();
    match (msg, phase) {
        (Msg::Notify, Phase::Idle) => {
            o.send(to(DB), Msg::Claim(me));
            set_phase(state, Phase::Claiming);
        }
        (Msg::Claimed(to_owner, Some((_, epoch))), Phase::Claiming) if to_owner == me => {
            // The cycle: its effect first, its completion once the resource
            // answered.
            o.send(to(RESOURCE), Msg::Effect(epoch));
            set_phase(state, Phase::Effecting(epoch));
        }
        (Msg::Claimed(to_owner, None), Phase::Claiming) if to_owner == me => {
            set_phase(state, Phase::Idle)
        }
        (Msg::EffectDone(e), Phase::Effecting(epoch)) if e == epoch => {
            if design == Design::TwoStepIdle {
                o.send(to(DB), Msg::ReadPending(me, epoch));
                set_phase(state, Phase::Reading(epoch));
            } else {
                o.send(to(DB), Msg::Complete(me, epoch));
                set_phase(state, Phase::Completing(epoch));
            }
        }
        (Msg::Pending(e, pending), Phase::Reading(epoch)) if e == epoch => {
            if pending {
                o.send(to(DB), Msg::Complete(me, epoch));
                set_phase(state, Phase::Completing(epoch));
            } else {
                o.send(to(DB), Msg::GoIdle(me, epoch));
                set_phase(state, Phase::Releasing(epoch));
            }
        }
        (Msg::Completed(e, done), Phase::Completing(epoch) | Phase::Releasing(epoch))
            if e == epoch =>
        {
            match done {
                Some((Some(_), next)) => {
                    o.send(to(RESOURCE), Msg::Effect(next));
                    set_phase(state, Phase::Effecting(next));
                }
                Some((None, _)) => {
                    o.send(to(DB), Msg::Sweep);
                    set_phase(state, Phase::Idle);
                }
                // Fenced (or a resent completion after one that applied).
                None => set_phase(state, Phase::Idle),
            }
        }
        _ => {}
    }
    let saved = state.clone().into_owned();
    o.save(saved);
}

type System = ActorModel<Node, Replicas, ()>;
type SystemState = ActorModelState<Node, ()>;

fn db(state: &SystemState) -> &Db {
    match &*state.actor_states[DB] {
        State::Db(db) => db,
        _ => unreachable!("actor 0 is the database"),
    }
}

/// A committed request is never lost: the row still shows it uncovered, or
/// a claim at or above its generation was made (after it).
fn nothing_lost(state: &SystemState) -> bool {
    let db = db(state);
    let row = db.table.rows.get(KEY);
    db.committed.iter().all(|&g| {
        let shown = row.is_some_and(|r| r.requested >= g && r.covered < g);
        shown || db.claims.iter().any(|&(_, claimed, _)| claimed >= g)
    })
}

/// Every claim's epoch is higher than every earlier claim's.
fn epochs_increase(state: &SystemState) -> bool {
    db(state).claims.windows(2).all(|w| w[0].0 < w[1].0)
}

/// The resource accepted effects only in increasing epochs: never a
/// superseded claim's after a later one's.
fn effects_from_the_newest_claim(state: &SystemState) -> bool {
    match &*state.actor_states[RESOURCE] {
        State::Resource(accepted) => accepted.windows(2).all(|w| w[0] < w[1]),
        _ => unreachable!("actor 1 is the resource"),
    }
}

/// Every claim was for a request no completed cycle covered.
fn no_claim_without_a_request(state: &SystemState) -> bool {
    db(state)
        .claims
        .iter()
        .all(|&(_, claimed, covered)| claimed > covered)
}

/// Every request made was committed and covered, the row swept, no replica
/// busy.
fn all_covered(state: &SystemState, cfg: &Replicas) -> bool {
    let db = db(state);
    db.committed.len() == usize::from(cfg.requests)
        && db.table.rows.is_empty()
        && state.network.len() == 0
}

impl Replicas {
    /// The actor model.
    pub fn model(self) -> System {
        let lossy = if self.lossy {
            LossyNetwork::Yes
        } else {
            LossyNetwork::No
        };
        let mut model = ActorModel::new(self, ())
            .actor(Node::Db(self.design, self.replicas))
            .actor(Node::Resource(self.design))
            .actor(Node::Client(self.requests))
            .init_network(Network::new_unordered_nonduplicating([]))
            .lossy_network(lossy);
        for i in 0..self.replicas {
            model = model.actor(Node::Replica(self.design, self.crash && i == 0));
        }
        model
            .property(
                Expectation::Always,
                "a committed request is never lost",
                |_, s| nothing_lost(s),
            )
            .property(Expectation::Always, "epochs increase", |_, s| {
                epochs_increase(s)
            })
            .property(
                Expectation::Always,
                "accepted effects come from the newest claim",
                |_, s| effects_from_the_newest_claim(s),
            )
            .property(
                Expectation::Always,
                "no claim without a new request",
                |_, s| no_claim_without_a_request(s),
            )
            .property(
                Expectation::Sometimes,
                "every request covered, the row swept",
                |m, s| all_covered(s, &m.cfg),
            )
            .within_boundary(|cfg, s| {
                db(s).now <= cfg.max_now
                    && s.network.len() <= cfg.max_in_flight
                    && s.actor_states.iter().all(|a| match &**a {
                        State::Replica(incarnation, _) => *incarnation <= 1,
                        _ => true,
                    })
            })
    }
}

/// The outcome of one check of the replicas model.
#[derive(Debug, Clone)]
pub struct ReplicasRun {
    /// What was checked.
    pub spec: Replicas,
    /// Distinct states.
    pub states: usize,
    /// Generated states.
    pub generated: usize,
    /// Wall time.
    pub elapsed: std::time::Duration,
    /// Violated properties, with a counterexample trace each.
    pub counterexamples: Vec<(&'static str, String)>,
    /// `sometimes` properties never reached.
    pub unreached: Vec<&'static str>,
}

impl ReplicasRun {
    /// No counterexample, every `sometimes` reached.
    pub fn holds(&self) -> bool {
        self.counterexamples.is_empty() && self.unreached.is_empty()
    }
}

impl std::fmt::Display for ReplicasRun {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "replicas {:?} ({} replicas, {} requests, clock to {}, a crash: {}, lossy: {}, \
             at most {} messages in flight): {} distinct states ({} generated), {:.1} s",
            self.spec.design,
            self.spec.replicas,
            self.spec.requests,
            self.spec.max_now,
            self.spec.crash,
            self.spec.lossy,
            self.spec.max_in_flight,
            self.states,
            self.generated,
            self.elapsed.as_secs_f64()
        )?;
        for name in &self.unreached {
            writeln!(f, "  UNREACHED: {name}")?;
        }
        for (name, trace) in &self.counterexamples {
            writeln!(f, "  VIOLATED:  {name}; counterexample:\n{trace}")?;
        }
        Ok(())
    }
}

/// Checks `spec` exhaustively (depth first, on every core); each
/// counterexample is then searched again breadth first with a growing depth
/// bound, so the trace reported is a shortest one.
pub fn check(spec: Replicas) -> ReplicasRun {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = std::time::Instant::now();
    let model = spec.model();
    let properties: Vec<(&'static str, Expectation)> = model
        .properties()
        .iter()
        .map(|p| (p.name, p.expectation.clone()))
        .collect();
    // The protocol: every state. A refuted design: breadth first, until
    // the first counterexample (a short one; exhausting those models would
    // only find more).
    let names: Vec<&'static str> = properties.iter().map(|(n, _)| *n).collect();
    let (states, generated, max_depth, found) = if spec.design == Design::Protocol {
        summarize(model.checker().threads(threads).spawn_dfs().join(), &names)
    } else {
        summarize(
            model
                .checker()
                .threads(threads)
                .finish_when(stateright::HasDiscoveries::AnyFailures)
                .spawn_bfs()
                .join(),
            &names,
        )
    };
    let mut run = ReplicasRun {
        spec,
        states,
        generated,
        elapsed: started.elapsed(),
        counterexamples: Vec::new(),
        unreached: Vec::new(),
    };
    for ((name, expectation), found) in properties.into_iter().zip(found) {
        match (expectation, found) {
            (Expectation::Sometimes, None) => run.unreached.push(name),
            (Expectation::Sometimes, Some(_)) | (_, None) => {}
            (_, Some(path)) => {
                let path = if spec.design == Design::Protocol {
                    shortest(spec, name, max_depth).unwrap_or(path)
                } else {
                    path
                };
                run.counterexamples
                    .push((name, trace(&spec.model(), &path)));
            }
        }
    }
    run
}

type Found = Option<stateright::Path<SystemState, <System as Model>::Action>>;

/// States, generated states, depth, and each property's discovery.
fn summarize(
    checker: impl Checker<System>,
    names: &[&'static str],
) -> (usize, usize, usize, Vec<Found>) {
    let found = names.iter().map(|n| checker.discovery(n)).collect();
    (
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth(),
        found,
    )
}

/// A shortest path to a discovery for `name`: breadth first with the depth
/// bound raised a step at a time (stateright's breadth-first checker keeps
/// the last discovery it makes, not the first).
fn shortest(
    spec: Replicas,
    name: &'static str,
    max_depth: usize,
) -> Option<stateright::Path<SystemState, <System as Model>::Action>> {
    for depth in 2..=max_depth + 1 {
        let checker = spec
            .model()
            .checker()
            .target_max_depth(depth)
            .finish_when(stateright::HasDiscoveries::AnyOf([name].into()))
            .spawn_bfs()
            .join();
        if let Some(path) = checker.discovery(name) {
            return Some(path);
        }
    }
    None
}

fn actor_name(id: Id) -> String {
    match usize::from(id) {
        0 => "database".to_owned(),
        1 => "resource".to_owned(),
        2 => "client".to_owned(),
        n => format!("replica r{}", n - FIRST_REPLICA),
    }
}

/// A path as numbered steps, with the row after each.
fn trace(
    model: &System,
    path: &stateright::Path<SystemState, <System as Model>::Action>,
) -> String {
    use stateright::actor::ActorModelAction as A;
    let mut out = String::new();
    for (i, (state, action)) in path.clone().into_vec().into_iter().enumerate() {
        let Some(action) = action else { break };
        let step = match &action {
            A::Deliver { src, dst, msg } => {
                format!("{} → {}: {msg:?}", actor_name(*src), actor_name(*dst))
            }
            A::Drop(env) => format!(
                "lost: {} → {}: {:?}",
                actor_name(env.src),
                actor_name(env.dst),
                env.msg
            ),
            A::Timeout(id, timer) => format!("{} timer {timer:?}", actor_name(*id)),
            A::Crash(id) => format!("{} crashes", actor_name(*id)),
            A::Recover(id) => format!("{} recovers", actor_name(*id)),
            other => format!("{other:?}"),
        };
        let after = model.next_state(&state, action);
        let row = after.as_ref().map(|s| {
            let d = db(s);
            match d.table.rows.get(KEY) {
                None => format!("row: none; committed {:?}", d.committed),
                Some(r) => format!(
                    "row: requested {} covered {} claimed {:?} owner {:?} epoch {}; committed {:?}",
                    r.requested, r.covered, r.claimed, r.owner, r.epoch, d.committed
                ),
            }
        });
        let _ = writeln!(out, "    {:>2}. {step}", i + 1);
        if let Some(row) = row {
            let _ = writeln!(out, "        {row}");
        }
    }
    out
}
