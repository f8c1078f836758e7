//! `coalescer-spec`: check the model, show the Go algorithm's
//! counterexamples, or serve stateright's Explorer.
//!
//! ```text
//! cargo run -p coalescer-spec --release -- check     # exhaustive check, with counts
//! cargo run -p coalescer-spec --release -- marks [KEYS REQUESTERS EACH OTHERS]
//!                                                     # with memos and marks
//! cargo run -p coalescer-spec --release -- retry     # with a retry policy
//! cargo run -p coalescer-spec --release -- limit     # with a concurrency limit of 1
//! cargo run -p coalescer-spec --release -- go        # the Go algorithm's D1/D2 traces
//! cargo run -p coalescer-spec --release -- replicas  # coalescer-postgres's protocol
//! cargo run -p coalescer-spec --release -- replicas-refuted
//!                                                     # the peers' designs, with traces
//! cargo run -p coalescer-spec --release -- explore [ADDR]   # default 127.0.0.1:3000
//! ```

#[cfg(not(loom))]
fn main() -> std::process::ExitCode {
    use coalescer_spec::model::{self, Spec};

    let mut args = std::env::args().skip(1);
    let command = args.next();
    match command.as_deref() {
        Some("check") => report(model::run(Spec::coalescer())),
        Some("marks") => {
            // Optional bounds: KEYS REQUESTERS REQUESTS_EACH OTHERS_MAKE.
            let mut spec = Spec::marks();
            let mut bound = |field: &mut u8| {
                if let Some(n) = args.next().and_then(|a| a.parse().ok()) {
                    *field = n;
                }
            };
            bound(&mut spec.keys);
            bound(&mut spec.requesters);
            bound(&mut spec.requests_each);
            let mut others = spec.others_make.unwrap_or(spec.requests_each);
            bound(&mut others);
            spec.others_make = Some(others);
            report(model::run(spec))
        }
        Some("retry") => report(model::run(Spec::retry())),
        Some("limit") => report(model::run(Spec::limit())),
        Some("go") => report(model::run(Spec::go())),
        Some("replicas") => {
            // Optional bounds: REPLICAS REQUESTS MAX_NOW CRASH(0/1) LOSSY(0/1) IN_FLIGHT.
            let mut spec = coalescer_spec::replicas::Replicas::protocol();
            let mut next = || args.next().and_then(|a| a.parse::<u64>().ok());
            if let Some(n) = next() {
                spec.replicas = n as usize;
            }
            if let Some(n) = next() {
                spec.requests = n as u8;
            }
            if let Some(n) = next() {
                spec.max_now = n;
            }
            if let Some(n) = next() {
                spec.crash = n != 0;
            }
            if let Some(n) = next() {
                spec.lossy = n != 0;
            }
            if let Some(n) = next() {
                spec.max_in_flight = n as usize;
            }
            let run = coalescer_spec::replicas::check(spec);
            print!("{run}");
            if run.holds() {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Some("replicas-refuted") => {
            use coalescer_spec::replicas::{check, Design, Replicas};
            // Each design is expected to fail: success is a counterexample
            // for each.
            let mut all_refuted = true;
            for design in [Design::TwoStepIdle, Design::Unfenced, Design::Advisory] {
                let run = check(Replicas::refuted(design));
                print!("{run}");
                all_refuted &= !run.counterexamples.is_empty();
            }
            if all_refuted {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            }
        }
        Some("explore") => {
            let address = args.next().unwrap_or_else(|| "127.0.0.1:3000".to_owned());
            eprintln!("serving stateright's Explorer on http://{address}/ (Ctrl-C to stop)");
            model::explore(Spec::coalescer(), &address);
            std::process::ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: coalescer-spec check | marks [KEYS REQUESTERS EACH OTHERS] | retry | limit | go | replicas | replicas-refuted | explore [ADDR]");
            std::process::ExitCode::from(2)
        }
    }
}

#[cfg(not(loom))]
fn report(run: coalescer_spec::model::Run) -> std::process::ExitCode {
    print!("{run}");
    if run.holds() {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

#[cfg(loom)]
fn main() {
    eprintln!("the model checker is not built under --cfg loom");
}
