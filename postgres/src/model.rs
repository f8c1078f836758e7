//! The protocol's row transitions as pure functions: what each SQL statement
//! in `sql/` does to the rows of one namespace, and what it returns.
//!
//! This is the reference the statements are checked against: the
//! differential test (`tests/differential.rs`) applies the same random steps
//! to a [`Table`] and to real PostgreSQL and compares every returned value
//! and every row. Time is a number here (`now`, leases in the same units);
//! the fencing sequence is [`Table::seq`], drawn exactly when the SQL draws
//! `nextval('coalescer_seq')`.

use std::collections::BTreeMap;

/// One key's row (the columns of `coalescer_keys`, but the namespace).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Row {
    /// The generation of the latest accepted request.
    pub requested: i64,
    /// The latest generation a completed cycle covered (0: none yet).
    pub covered: i64,
    /// The earliest request no completed cycle covers (`None`: none).
    pub since: Option<i64>,
    /// The earliest request the running cycle does not cover.
    pub after: Option<i64>,
    /// The generation the running cycle covers (`None`: none running).
    pub claimed: Option<i64>,
    /// The replica running it.
    pub owner: Option<String>,
    /// Until when the owner's lease holds.
    pub lease_until: Option<u64>,
    /// The fencing epoch of the current (or last) claim (0: never claimed).
    pub epoch: i64,
    /// Claims that took the key from an owner whose lease had expired.
    pub takeovers: i64,
}

impl Row {
    /// Whether a request is not yet covered by a completed cycle.
    pub fn pending(&self) -> bool {
        self.requested > self.covered
    }

    /// Whether the row is idle (the sweep may remove it).
    pub fn idle(&self) -> bool {
        self.owner.is_none() && self.requested == self.covered
    }
}

/// What `request` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Requested {
    /// The request's generation: a cycle whose claim is at or above it
    /// covers it.
    pub generation: i64,
    /// Whether it is the one request that makes an unowned key due (a
    /// fresh cycle will be claimed for it); otherwise it folded into a
    /// cycle already owed.
    pub started: bool,
    /// Whether it notified the namespace's replicas (nobody owned the key).
    pub notified: bool,
}

/// One row `claim` took.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Claimed {
    /// The key.
    pub key: String,
    /// The generation the cycle covers.
    pub claimed: i64,
    /// The cycle's fencing epoch.
    pub epoch: i64,
    /// The owner whose lease had expired (`None`: the key was unowned).
    pub previous: Option<String>,
}

/// What `complete` returned for a cycle that still owned its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Completed {
    /// The next cycle's claim, if the owner goes again.
    pub claimed: Option<i64>,
    /// The next cycle's epoch if it goes again, else the completed one's.
    pub epoch: i64,
    /// Whether requests are still uncovered (going again, or handed back).
    pub pending: bool,
    /// Whether the namespace was notified (handed back, pending).
    pub notified: bool,
}

/// The rows of one namespace, and the sequence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Table {
    /// The rows, by key.
    pub rows: BTreeMap<String, Row>,
    /// The sequence's last value (`nextval` returns one more).
    pub seq: i64,
}

impl Table {
    fn nextval(&mut self) -> i64 {
        self.seq += 1;
        self.seq
    }

    /// `request.sql`. The insert's generation is drawn before the conflict
    /// is known, so a request for an existing row draws twice and keeps the
    /// second.
    pub fn request(&mut self, key: &str) -> Requested {
        let first = self.nextval();
        let row = match self.rows.get(key) {
            None => {
                let row = Row {
                    requested: first,
                    covered: 0,
                    since: Some(first),
                    after: None,
                    claimed: None,
                    owner: None,
                    lease_until: None,
                    epoch: 0,
                    takeovers: 0,
                };
                self.rows.insert(key.to_owned(), row);
                &self.rows[key]
            }
            Some(_) => {
                let g = self.nextval();
                let row = self.rows.get_mut(key).expect("present");
                row.requested = g;
                row.since = Some(row.since.unwrap_or(g));
                if row.claimed.is_some() {
                    row.after = Some(row.after.unwrap_or(g));
                }
                &*row
            }
        };
        let owned = row.owner.is_some();
        Requested {
            generation: row.requested,
            started: !owned && row.since == Some(row.requested),
            notified: !owned,
        }
    }

    /// `claim.sql`: up to `limit` due rows, oldest uncovered request first;
    /// `running` are the keys the claimer runs now (never taken over from
    /// itself).
    pub fn claim(
        &mut self,
        owner: &str,
        now: u64,
        lease: u64,
        limit: usize,
        running: &[String],
    ) -> Vec<Claimed> {
        let mut due: Vec<(i64, String)> = self
            .rows
            .iter()
            .filter(|(k, r)| {
                r.pending()
                    && match &r.owner {
                        None => true,
                        Some(o) => {
                            r.lease_until.is_some_and(|t| t < now)
                                && !(o == owner && running.contains(k))
                        }
                    }
            })
            .map(|(k, r)| (r.since.expect("a pending row has since"), k.clone()))
            .collect();
        due.sort();
        due.truncate(limit);
        let mut out = Vec::new();
        for (_, key) in due {
            let epoch = self.nextval();
            let row = self.rows.get_mut(&key).expect("present");
            let previous = row.owner.replace(owner.to_owned());
            row.claimed = Some(row.requested);
            row.after = None;
            row.epoch = epoch;
            row.lease_until = Some(now + lease);
            row.takeovers += i64::from(previous.is_some());
            out.push(Claimed {
                key,
                claimed: row.requested,
                epoch,
                previous,
            });
        }
        out
    }

    fn held(&mut self, key: &str, owner: &str, epoch: i64) -> Option<&mut Row> {
        self.rows
            .get_mut(key)
            .filter(|r| r.owner.as_deref() == Some(owner) && r.epoch == epoch)
    }

    /// `complete.sql`: `None` if fenced.
    pub fn complete(
        &mut self,
        key: &str,
        owner: &str,
        epoch: i64,
        now: u64,
        lease: u64,
        go_on: bool,
    ) -> Option<Completed> {
        let row = self.held(key, owner, epoch)?;
        let claimed = row.claimed.expect("an owned row has a claim");
        let again = go_on && row.requested > claimed;
        // The CASE draws the epoch only when the owner goes again.
        let next_epoch = again.then(|| self.nextval());
        let row = self.rows.get_mut(key).expect("held");
        row.covered = claimed;
        row.since = row.after.take();
        match next_epoch {
            Some(next) => {
                row.claimed = Some(row.requested);
                row.epoch = next;
                row.lease_until = Some(now + lease);
            }
            None => {
                row.claimed = None;
                row.owner = None;
                row.lease_until = None;
            }
        }
        let row = &self.rows[key];
        let pending = row.pending();
        Some(Completed {
            claimed: row.claimed,
            epoch: row.epoch,
            pending,
            notified: row.owner.is_none() && pending,
        })
    }

    /// `abandon.sql`: `false` if fenced.
    pub fn abandon(&mut self, key: &str, owner: &str, epoch: i64) -> bool {
        let Some(row) = self.held(key, owner, epoch) else {
            return false;
        };
        row.owner = None;
        row.claimed = None;
        row.after = None;
        row.lease_until = None;
        true
    }

    /// `renew.sql`: the keys whose lease was extended.
    pub fn renew(
        &mut self,
        owner: &str,
        held: &[(String, i64)],
        now: u64,
        lease: u64,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (key, epoch) in held {
            if let Some(row) = self.held(key, owner, *epoch) {
                row.lease_until = Some(now + lease);
                out.push(key.clone());
            }
        }
        out
    }

    /// `sweep.sql`: how many idle rows it removed.
    pub fn sweep(&mut self, key: Option<&str>) -> u64 {
        let before = self.rows.len();
        self.rows
            .retain(|k, r| !(key.map_or(true, |key| key == k) && r.idle()));
        (before - self.rows.len()) as u64
    }

    /// `fence.sql`: whether epoch `epoch` still owns `key`.
    pub fn fence(&self, key: &str, owner: &str, epoch: i64) -> bool {
        self.rows
            .get(key)
            .is_some_and(|r| r.owner.as_deref() == Some(owner) && r.epoch == epoch)
    }
}
