//! Running the checker: an exhaustive run and its report, the shortest
//! counterexample, the Explorer.

use std::fmt;
use std::time::{Duration, Instant};

use stateright::{Checker, Expectation, Model, Path};

use super::symmetry::representative;
use super::trace::trace;
use super::*;

/// The outcome of one exhaustive check.
#[derive(Debug, Clone)]
pub struct Run {
    /// What was checked.
    pub spec: Spec,
    /// Distinct states explored.
    pub states: usize,
    /// States generated, duplicates included.
    pub generated: usize,
    /// The longest path explored, in steps.
    pub max_depth: usize,
    /// Wall time of the check.
    pub elapsed: Duration,
    /// Every `always` property that failed, with its shortest counterexample
    /// as a readable trace.
    pub counterexamples: Vec<(&'static str, String)>,
    /// Every `sometimes` property that was never reached (a vacuous model).
    pub unreached: Vec<&'static str>,
    /// Every `sometimes` property that was reached.
    pub reached: Vec<&'static str>,
}

impl Run {
    /// No counterexample, and every `sometimes` property reached.
    pub fn holds(&self) -> bool {
        self.counterexamples.is_empty() && self.unreached.is_empty()
    }

    /// The trace of the counterexample to the property whose name starts
    /// with `prefix`, if one was found.
    pub fn counterexample(&self, prefix: &str) -> Option<&str> {
        self.counterexamples
            .iter()
            .find(|(name, _)| name.starts_with(prefix))
            .map(|(_, trace)| trace.as_str())
    }
}

impl fmt::Display for Run {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "spec {:?}{}{}{} ({} keys, {} requesters x {} requests{}, panics: {}, shutdown: {}): \
             {} distinct states ({} generated), max depth {}, {:.1} s",
            self.spec.protocol,
            if self.spec.marks { " with marks" } else { "" },
            match self.spec.retries {
                0 => String::new(),
                n => format!(" with retries (up to {n} in a row)"),
            },
            match self.spec.limit {
                0 => String::new(),
                n => format!(" with a concurrency limit of {n}"),
            },
            self.spec.keys,
            self.spec.requesters,
            self.spec.requests_each,
            match self.spec.others_make {
                Some(n) if self.spec.requesters > 1 => format!(" (all but the first: {n})"),
                _ => String::new(),
            },
            self.spec.panics,
            self.spec.shutdown && self.spec.protocol == Protocol::Coalescer,
            self.states,
            self.generated,
            self.max_depth,
            self.elapsed.as_secs_f64()
        )?;
        for name in &self.reached {
            writeln!(f, "  reached:   {name}")?;
        }
        for name in &self.unreached {
            writeln!(f, "  UNREACHED: {name}")?;
        }
        for (name, trace) in &self.counterexamples {
            writeln!(f, "  VIOLATED:  {name}; shortest counterexample:\n{trace}")?;
        }
        Ok(())
    }
}

/// Checks `spec` exhaustively (depth first, on every core) and reports;
/// each counterexample is then searched again breadth first with a growing
/// depth bound, so the trace reported is a shortest one.
pub fn run(spec: Spec) -> Run {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    let checker = spec
        .clone()
        .checker()
        .threads(threads)
        .symmetry_fn(representative)
        .spawn_dfs()
        .join();
    let elapsed = started.elapsed();
    let mut run = Run {
        spec: spec.clone(),
        states: checker.unique_state_count(),
        generated: checker.state_count(),
        max_depth: checker.max_depth(),
        elapsed,
        counterexamples: Vec::new(),
        unreached: Vec::new(),
        reached: Vec::new(),
    };
    for property in spec.properties() {
        let found = checker.discovery(property.name).is_some();
        match (property.expectation, found) {
            (Expectation::Sometimes, true) => run.reached.push(property.name),
            (Expectation::Sometimes, false) => run.unreached.push(property.name),
            (_, true) => {
                let path = shortest(&spec, property.name, run.max_depth)
                    .or_else(|| checker.discovery(property.name));
                let shown = path.map_or_else(String::new, |p| trace(&spec, &p));
                run.counterexamples.push((property.name, shown));
            }
            (_, false) => {}
        }
    }
    run
}

/// A shortest path to a discovery for `name`: breadth first with the depth
/// bound raised one step at a time, up to `max_depth`. (Stateright's own
/// breadth-first checker keeps the *last* discovery it makes, not the
/// first.)
fn shortest(spec: &Spec, name: &'static str, max_depth: usize) -> Option<Path<State, Action>> {
    for depth in 2..=max_depth + 1 {
        let checker = spec
            .clone()
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

/// Serves stateright's Explorer for `spec` on `address` (blocks).
pub fn explore(spec: Spec, address: &str) {
    let _checker = spec.checker().serve(address);
}
