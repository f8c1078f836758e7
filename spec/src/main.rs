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
        Some("explore") => {
            let address = args.next().unwrap_or_else(|| "127.0.0.1:3000".to_owned());
            eprintln!("serving stateright's Explorer on http://{address}/ (Ctrl-C to stop)");
            model::explore(Spec::coalescer(), &address);
            std::process::ExitCode::SUCCESS
        }
        _ => {
            eprintln!("usage: coalescer-spec check | marks [KEYS REQUESTERS EACH OTHERS] | retry | limit | go | explore [ADDR]");
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
