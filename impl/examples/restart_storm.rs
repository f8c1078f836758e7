//! A restart storm: many tasks write workspace configs in bursts, and every
//! write asks for its workspace to be restarted. The coalescer runs at most
//! one restart per workspace at a time, folds the burst into follow-ups,
//! contains the restarts that panic, and retries the restarts that fail (or
//! panic) with exponential backoff. At the end it checks, per workspace,
//! that a restart that succeeded loaded the last config (no lost update) —
//! unless the retries for it were given up on, which is reported — and that
//! no two restarts of a workspace overlapped — and, with `--concurrency N`,
//! that never more than `N` restarts ran at once across workspaces — and
//! exits non-zero otherwise.
//!
//! ```text
//! cargo run --release --example restart_storm -- [--workspaces N] [--writes M]
//!     [--panic-rate P] [--fail-rate P] [--min-interval MS] [--restart-ms MS]
//!     [--concurrency N] [--debounce MS] [--max-wait MS] [--writers T] [--seed S]
//! ```

// The loom build (RUSTFLAGS="--cfg loom") has no tokio; there this example
// is empty.
#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
fn main() -> std::process::ExitCode {
    storm::main()
}

#[cfg(not(loom))]
mod storm {
    use std::io::IsTerminal;
    use std::process::ExitCode;
    use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use coalescer::{Backoff, Coalescer};

    /// What to simulate.
    #[derive(Debug, Clone)]
    struct Config {
        workspaces: u32,
        writes: u64,
        panic_rate: f64,
        fail_rate: f64,
        min_interval: Duration,
        restart: Duration,
        /// At most this many restarts at once across workspaces (0: no limit).
        concurrency: usize,
        /// A restart begins once its workspace was quiet this long (zero: none) ...
        debounce: Duration,
        /// ... or this long after the earliest write it covers (`None`: no ceiling).
        max_wait: Option<Duration>,
        writers: u32,
        seed: u64,
    }

    impl Default for Config {
        fn default() -> Self {
            Config {
                workspaces: 200,
                writes: 100_000,
                panic_rate: 0.01,
                fail_rate: 0.05,
                min_interval: Duration::ZERO,
                restart: Duration::from_millis(3),
                concurrency: 0,
                debounce: Duration::ZERO,
                max_wait: None,
                writers: 64,
                seed: 0x5eed,
            }
        }
    }

    /// What happened, and what the checks found.
    #[derive(Debug, Clone, PartialEq)]
    struct Report {
        writes: u64,
        restarts: u64,
        panics: u64,
        /// Restarts that returned an error.
        failures: u64,
        retries: u64,
        give_ups: u64,
        rejected: u64,
        /// Workspaces whose last config no restart loaded at all, or only a
        /// restart that failed and was not the last.
        lost_updates: u32,
        /// Workspaces whose last config only a failed restart loaded, its
        /// retries given up on (at shutdown, or after `MAX_RETRIES`).
        given_up_configs: u32,
        /// The most restarts of one workspace that ever ran at once.
        max_concurrent: u32,
        /// The most restarts that ever ran at once, across workspaces.
        max_running: u32,
        /// The limit (0: none).
        concurrency: usize,
        active_after_shutdown: usize,
        wall: Duration,
    }

    impl Report {
        fn passed(&self) -> bool {
            self.lost_updates == 0
                && u64::from(self.given_up_configs) <= self.give_ups
                && self.max_concurrent <= 1
                && (self.concurrency == 0 || self.max_running as usize <= self.concurrency)
                && self.rejected == 0
                && self.active_after_shutdown == 0
        }
    }

    /// One workspace: its config version, and its restarts' bookkeeping.
    #[derive(Debug, Default)]
    struct Workspace {
        /// Bumped by every write, before the write requests a restart.
        version: AtomicU64,
        /// The highest version a restart loaded, when it began.
        loaded: AtomicU64,
        /// The highest version a restart that succeeded loaded.
        applied: AtomicU64,
        /// The highest version a restart that failed (or panicked) loaded.
        failed: AtomicU64,
        /// Restarts of this workspace running right now.
        running: AtomicU32,
    }

    /// splitmix64: a small, good-enough PRNG step, so the example needs no
    /// dependency.
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform draw in [0, 1) from `x`.
    fn unit(x: u64) -> f64 {
        (x >> 11) as f64 / (1u64 << 53) as f64
    }

    const INJECTED: &str = "restart panicked (injected)";

    /// A restart that failed.
    #[derive(Debug)]
    struct RestartFailed;

    impl std::fmt::Display for RestartFailed {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("the workspace did not come up (injected)")
        }
    }

    impl std::error::Error for RestartFailed {}

    /// Failed restarts are retried after 2 ms, 4 ms, … up to 50 ms, at most
    /// five times in a row.
    const MAX_RETRIES: u32 = 5;
    fn backoff() -> Backoff {
        Backoff::exponential(Duration::from_millis(2), Duration::from_millis(50))
            .max_retries(MAX_RETRIES)
            .jitter()
    }

    /// Keeps the std panic hook quiet about the restarts that fail on purpose
    /// (the coalescer contains and counts them); any other panic still prints.
    fn quiet_injected_panics() {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if info.payload().downcast_ref::<&str>() != Some(&INJECTED) {
                previous(info);
            }
        }));
    }

    /// Decrements a workspace's running count however the restart ends.
    struct Running<'a>(&'a AtomicU32);

    impl Drop for Running<'_> {
        fn drop(&mut self) {
            self.0.fetch_sub(1, Ordering::SeqCst);
        }
    }

    async fn storm(config: Config, progress: bool) -> Report {
        let started = Instant::now();
        let workspaces: Arc<Vec<Workspace>> = Arc::new(
            (0..config.workspaces)
                .map(|_| Workspace::default())
                .collect(),
        );
        let max_concurrent = Arc::new(AtomicU32::new(0));
        let running = Arc::new(AtomicU32::new(0));
        let max_running = Arc::new(AtomicU32::new(0));
        let draws = Arc::new(AtomicU64::new(config.seed));

        let coalescer = {
            let (workspaces, max_concurrent) =
                (Arc::clone(&workspaces), Arc::clone(&max_concurrent));
            let (running, max_running) = (Arc::clone(&running), Arc::clone(&max_running));
            let (restart, panic_rate, fail_rate) =
                (config.restart, config.panic_rate, config.fail_rate);
            Coalescer::builder()
                .min_interval(config.min_interval)
                .concurrency(config.concurrency)
                .debounce(config.debounce)
                .max_wait(config.max_wait.unwrap_or(Duration::MAX))
                // Contained panics are counted in `stats()`; nothing to log.
                .panic_hook(|_| {})
                .retry(backoff())
                .build(move |id: u32| {
                    let ws = &workspaces[id as usize];
                    let now = ws.running.fetch_add(1, Ordering::SeqCst) + 1;
                    max_concurrent.fetch_max(now, Ordering::SeqCst);
                    // The restart loads the config as it is when it begins.
                    let version = ws.version.load(Ordering::SeqCst);
                    ws.loaded.fetch_max(version, Ordering::SeqCst);
                    let draw = unit(mix(draws.fetch_add(1, Ordering::Relaxed)));
                    let (panics, fails) = (draw < panic_rate, draw >= 1.0 - fail_rate);
                    let all = running.fetch_add(1, Ordering::SeqCst) + 1;
                    max_running.fetch_max(all, Ordering::SeqCst);
                    let (workspaces, running) = (Arc::clone(&workspaces), Arc::clone(&running));
                    async move {
                        let ws = &workspaces[id as usize];
                        let _running = Running(&ws.running);
                        let _all = Running(&running);
                        tokio::time::sleep(restart).await;
                        if panics || fails {
                            ws.failed.fetch_max(version, Ordering::SeqCst);
                        }
                        if panics {
                            std::panic::panic_any(INJECTED);
                        }
                        if fails {
                            return Err(RestartFailed);
                        }
                        ws.applied.fetch_max(version, Ordering::SeqCst);
                        Ok(())
                    }
                })
        };
        let coalescer = Arc::new(coalescer);

        // Progress, once a second (in place on a terminal).
        let done = Arc::new(AtomicBool::new(false));
        let written = Arc::new(AtomicU64::new(0));
        let reporter = progress.then(|| {
            let (c, done, written) = (
                Arc::clone(&coalescer),
                Arc::clone(&done),
                Arc::clone(&written),
            );
            let total = config.writes;
            tokio::spawn(async move {
                let tty = std::io::stderr().is_terminal();
                while !done.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    let s = c.stats();
                    let line = format!(
                        "writes {:>7}/{total}  restarts {:>6}  panics {:>4}  failures {:>4}  \
                         retries {:>4}  active workspaces {:>4}",
                        written.load(Ordering::Relaxed),
                        s.cycles,
                        s.panics,
                        s.failures,
                        s.retries,
                        c.active_keys()
                    );
                    if tty {
                        eprint!("\r{line}");
                    } else {
                        eprintln!("{line}");
                    }
                }
                if tty {
                    eprintln!();
                }
            })
        });

        // Writers: each writes its share in bursts, pausing between bursts.
        let mut writers = tokio::task::JoinSet::new();
        let rejected = Arc::new(AtomicU64::new(0));
        for w in 0..u64::from(config.writers) {
            let share = config.writes / u64::from(config.writers)
                + u64::from(w < config.writes % u64::from(config.writers));
            let (c, workspaces, written, rejected) = (
                Arc::clone(&coalescer),
                Arc::clone(&workspaces),
                Arc::clone(&written),
                Arc::clone(&rejected),
            );
            let n = u64::from(config.workspaces);
            let mut rng = mix(config.seed ^ (w + 1));
            writers.spawn(async move {
                let mut left = share;
                while left > 0 {
                    rng = mix(rng);
                    let burst = (1 + rng % 100).min(left);
                    // A burst hits a few workspaces, most writes on one of them.
                    let hot = (rng >> 20) % n;
                    for i in 0..burst {
                        rng = mix(rng);
                        let id = if i % 4 == 3 { rng % n } else { hot } as u32;
                        workspaces[id as usize]
                            .version
                            .fetch_add(1, Ordering::SeqCst);
                        if c.request(id).is_err() {
                            rejected.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    written.fetch_add(burst, Ordering::Relaxed);
                    left -= burst;
                    tokio::time::sleep(Duration::from_millis(1 + rng % 3)).await;
                }
            });
        }
        while writers.join_next().await.is_some() {}
        coalescer.shutdown().await;
        done.store(true, Ordering::Relaxed);
        if let Some(reporter) = reporter {
            let _ = reporter.await;
        }

        let stats = coalescer.stats();
        // A failed restart is retried or given up on, so a workspace whose
        // last config no successful restart applied must have had its last
        // restart fail — and a give-up counted for it.
        let unapplied = |ws: &&Workspace| {
            ws.applied.load(Ordering::SeqCst) != ws.version.load(Ordering::SeqCst)
        };
        let failed_last =
            |ws: &&Workspace| ws.failed.load(Ordering::SeqCst) == ws.version.load(Ordering::SeqCst);
        let lost_updates = workspaces
            .iter()
            .filter(|ws| unapplied(ws) && !failed_last(ws))
            .count() as u32;
        let given_up_configs = workspaces
            .iter()
            .filter(|ws| unapplied(ws) && failed_last(ws))
            .count() as u32;
        Report {
            writes: written.load(Ordering::SeqCst),
            restarts: stats.cycles,
            panics: stats.panics,
            failures: stats.failures,
            retries: stats.retries,
            give_ups: stats.give_ups,
            rejected: rejected.load(Ordering::SeqCst),
            lost_updates,
            given_up_configs,
            max_concurrent: max_concurrent.load(Ordering::SeqCst),
            max_running: max_running.load(Ordering::SeqCst),
            concurrency: config.concurrency,
            active_after_shutdown: coalescer.active_keys(),
            wall: started.elapsed(),
        }
    }

    fn print(config: &Config, r: &Report) {
        let ratio = r.writes as f64 / r.restarts.max(1) as f64;
        println!(
            "restart_storm: {} workspaces, min interval {:?}, debounce {:?} (max wait {:?}), \
             restart {:?}, panic rate {}, fail rate {} (retried: {:?})",
            config.workspaces,
            config.min_interval,
            config.debounce,
            config.max_wait,
            config.restart,
            config.panic_rate,
            config.fail_rate,
            backoff()
        );
        println!("| metric | value |");
        println!("|---|---|");
        println!("| writes | {} |", r.writes);
        println!("| restarts run | {} |", r.restarts);
        println!("| coalescing ratio (writes per restart) | {ratio:.1} |");
        println!("| panics contained | {} |", r.panics);
        println!("| restarts failed | {} |", r.failures);
        println!("| retries (of failures and panics) | {} |", r.retries);
        println!(
            "| given up (after {MAX_RETRIES} retries in a row, or failed inside the drain) | {} |",
            r.give_ups
        );
        println!("| rejected requests | {} |", r.rejected);
        println!("| lost updates | {} |", r.lost_updates);
        println!(
            "| last configs given up on (at most the give-ups) | {} |",
            r.given_up_configs
        );
        println!(
            "| max concurrent restarts per workspace | {} |",
            r.max_concurrent
        );
        let limit = match r.concurrency {
            0 => "no limit".to_owned(),
            n => format!("limit {n}"),
        };
        println!(
            "| max concurrent restarts across workspaces ({limit}) | {} |",
            r.max_running
        );
        println!("| wall time | {:.2} s |", r.wall.as_secs_f64());
        println!(
            "{}",
            if r.passed() {
                "all checks passed"
            } else {
                "CHECK FAILED"
            }
        );
    }

    /// Parses the command line into a config, or says what is wrong.
    fn parse(args: impl Iterator<Item = String>) -> Result<Config, String> {
        let mut config = Config::default();
        let mut args = args;
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                return Err(String::new());
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--workspaces" => config.workspaces = value.parse().map_err(|e| bad(&e))?,
                "--writes" => config.writes = value.parse().map_err(|e| bad(&e))?,
                "--panic-rate" => config.panic_rate = value.parse().map_err(|e| bad(&e))?,
                "--fail-rate" => config.fail_rate = value.parse().map_err(|e| bad(&e))?,
                "--min-interval" => {
                    config.min_interval = Duration::from_millis(value.parse().map_err(|e| bad(&e))?)
                }
                "--restart-ms" => {
                    config.restart = Duration::from_millis(value.parse().map_err(|e| bad(&e))?)
                }
                "--concurrency" => config.concurrency = value.parse().map_err(|e| bad(&e))?,
                "--debounce" => {
                    config.debounce = Duration::from_millis(value.parse().map_err(|e| bad(&e))?)
                }
                "--max-wait" => {
                    config.max_wait =
                        Some(Duration::from_millis(value.parse().map_err(|e| bad(&e))?))
                }
                "--writers" => config.writers = value.parse().map_err(|e| bad(&e))?,
                "--seed" => config.seed = value.parse().map_err(|e| bad(&e))?,
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        if config.workspaces == 0 || config.writers == 0 {
            return Err("--workspaces and --writers must be at least 1".to_owned());
        }
        if !(0.0..=1.0).contains(&config.panic_rate) || !(0.0..=1.0).contains(&config.fail_rate) {
            return Err("--panic-rate and --fail-rate must be between 0 and 1".to_owned());
        }
        if config.panic_rate + config.fail_rate > 1.0 {
            return Err("--panic-rate and --fail-rate must add up to at most 1".to_owned());
        }
        Ok(config)
    }

    pub(super) fn main() -> ExitCode {
        let config = match parse(std::env::args().skip(1)) {
            Ok(config) => config,
            Err(message) => {
                if !message.is_empty() {
                    eprintln!("restart_storm: {message}");
                }
                eprintln!(
                    "usage: restart_storm [--workspaces N] [--writes M] [--panic-rate P] \
                     [--fail-rate P] [--min-interval MS] [--restart-ms MS] [--concurrency N] [--debounce MS] \
                     [--max-wait MS] [--writers T] [--seed S]"
                );
                return ExitCode::from(2);
            }
        };
        quiet_injected_panics();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        let report = runtime.block_on(storm(config.clone(), true));
        print(&config, &report);
        if report.passed() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        fn small(min_interval: u64) -> Config {
            Config {
                concurrency: 0,
                debounce: Duration::ZERO,
                max_wait: None,
                workspaces: 8,
                writes: 3_000,
                panic_rate: 0.1,
                fail_rate: 0.2,
                min_interval: Duration::from_millis(min_interval),
                restart: Duration::from_millis(1),
                writers: 8,
                seed: 7,
            }
        }

        fn run(config: Config) -> Report {
            quiet_injected_panics();
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap()
                .block_on(storm(config, false))
        }

        /// The storm at small sizes passes every check, with panics and
        /// coalescing actually happening.
        #[test]
        fn a_small_storm_loses_no_update_and_never_overlaps() {
            for interval in [0, 5] {
                let config = small(interval);
                let report = run(config.clone());
                print(&config, &report);
                assert!(report.passed(), "{report:?}");
                assert_eq!(report.writes, 3_000);
                assert!(
                    report.restarts < report.writes,
                    "nothing coalesced: {report:?}"
                );
                assert!(report.panics > 0, "no restart panicked: {report:?}");
                assert!(report.failures > 0, "no restart failed: {report:?}");
                assert!(report.retries > 0, "nothing retried: {report:?}");
            }
        }

        /// With `--concurrency 2`, the storm passes every check and never
        /// runs more than 2 restarts at once (and does run 2).
        #[test]
        fn a_small_storm_with_a_limit_stays_within_it() {
            let config = Config {
                concurrency: 2,
                ..small(0)
            };
            let report = run(config.clone());
            print(&config, &report);
            assert!(report.passed(), "{report:?}");
            assert_eq!(report.max_running, 2, "{report:?}");
        }

        /// With `--debounce 2 --max-wait 10`, the storm passes every check.
        #[test]
        fn a_small_debounced_storm_loses_no_update() {
            let config = Config {
                debounce: Duration::from_millis(2),
                max_wait: Some(Duration::from_millis(10)),
                ..small(0)
            };
            let report = run(config.clone());
            print(&config, &report);
            assert!(report.passed(), "{report:?}");
        }

        #[test]
        fn bad_options_are_refused() {
            let args = |a: &[&str]| parse(a.iter().map(|s| s.to_string()));
            assert!(args(&["--workspaces", "0"]).is_err());
            assert!(args(&["--panic-rate", "2"]).is_err());
            assert!(args(&["--fail-rate", "-1"]).is_err());
            assert!(args(&["--fail-rate", "0.6", "--panic-rate", "0.6"]).is_err());
            assert!(args(&["--writes"]).is_err());
            assert!(args(&["--bogus", "1"]).is_err());
            assert_eq!(
                args(&["--min-interval", "50"]).unwrap().min_interval,
                Duration::from_millis(50)
            );
        }
    }
}
