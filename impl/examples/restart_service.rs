//! An HTTP service that restarts workspaces when their config changes: the
//! job this crate exists for, as a service would run it.
//!
//! - `PUT /workspaces/{id}/config` bumps the workspace's config version and
//!   requests a restart: `202 {"version": v, "admission": "started" | "coalesced"}`;
//! - `POST /workspaces/{id}/restart` requests a restart:
//!   `202 {"admission": ...}`; with `?wait=true`, `200 {"admission": ...,
//!   "loaded_version": v}` once a restart that began after the call
//!   succeeded, or `502 {"error": ...}` if it failed and the retries gave up;
//! - `GET /metrics`: the coalescer's metrics (`docs/metrics.md`) in the
//!   Prometheus text format; `GET /healthz`: `ok`.
//!
//! A restart loads the workspace's config version as of its start and
//! fails at `--fail-rate`; failures are retried with exponential backoff;
//! at most `--concurrency` restarts run at once. On ctrl-c or SIGTERM the
//! server stops accepting connections and finishes the requests it has
//! (axum's graceful shutdown), then the coalescer drains (`shutdown`), and
//! the process exits 0. An id that is not a number gets a 400.
//!
//! ```text
//! cargo run --release --example restart_service -- [--addr 127.0.0.1:8080]
//!     [--fail-rate P] [--concurrency N] [--restart-ms MS] [--max-retries N] [--seed S]
//! ```

// The loom build (RUSTFLAGS="--cfg loom") has no tokio; there this example
// is empty.
#[cfg(loom)]
fn main() {}

#[cfg(not(loom))]
fn main() -> std::process::ExitCode {
    service::main()
}

#[cfg(not(loom))]
mod service {
    use std::collections::hash_map::RandomState;
    use std::collections::HashMap;
    use std::fmt;
    use std::future::Future;
    use std::net::SocketAddr;
    use std::process::ExitCode;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use axum::extract::{Path, Query, State};
    use axum::http::{header, StatusCode};
    use axum::response::{IntoResponse, Response};
    use axum::routing::{get, post, put};
    use axum::{Json, Router};
    use coalescer::{Admission, Backoff, Builder, Coalescer, CycleContext, Requester, RunError};
    use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
    use serde::Deserialize;
    use serde_json::json;
    use tokio::net::TcpListener;

    /// What a restart returns: the config version it loaded.
    pub(super) type Outcome = Result<u64, RestartError>;
    /// The service's coalescer, one key per workspace.
    pub(super) type Restarts = Coalescer<u64, RandomState, Outcome>;

    /// The service's options.
    #[derive(Debug, Clone)]
    pub(super) struct Config {
        pub(super) addr: SocketAddr,
        /// The chance that one restart fails.
        pub(super) fail_rate: f64,
        /// At most this many restarts at once (0: no limit).
        pub(super) concurrency: usize,
        /// How long a restart takes.
        pub(super) restart: Duration,
        /// The first retry's delay (doubling up to `retry_max`).
        pub(super) retry_first: Duration,
        pub(super) retry_max: Duration,
        /// Retries of one run of failures before giving up.
        pub(super) max_retries: u32,
        pub(super) seed: u64,
    }

    impl Default for Config {
        fn default() -> Self {
            Config {
                addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
                fail_rate: 0.1,
                concurrency: 16,
                restart: Duration::from_millis(20),
                retry_first: Duration::from_millis(50),
                retry_max: Duration::from_secs(2),
                max_retries: 8,
                seed: 1,
            }
        }
    }

    /// A restart that failed.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) struct RestartError {
        workspace: u64,
        version: u64,
    }

    impl fmt::Display for RestartError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(
                f,
                "workspace {} did not come back up with config version {}",
                self.workspace, self.version
            )
        }
    }

    impl std::error::Error for RestartError {}

    /// One workspace: its config version, and what its restarts did.
    #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
    pub(super) struct Workspace {
        pub(super) version: u64,
        /// The version the last successful restart loaded.
        pub(super) loaded: u64,
        pub(super) restarts: u64,
        pub(super) failed_restarts: u64,
        /// Restarts of this workspace running now.
        running: u32,
        /// Restarts that began while another one of this workspace ran
        /// (never, if the coalescer is right).
        pub(super) overlaps: u64,
    }

    /// Every workspace the service has seen.
    #[derive(Debug, Default)]
    pub(super) struct Workspaces(Mutex<HashMap<u64, Workspace>>);

    impl Workspaces {
        fn with<T>(&self, id: u64, f: impl FnOnce(&mut Workspace) -> T) -> T {
            f(self.0.lock().unwrap().entry(id).or_default())
        }

        pub(super) fn snapshot(&self) -> HashMap<u64, Workspace> {
            self.0.lock().unwrap().clone()
        }
    }

    /// What the handlers share: a handle to the coalescer (not the
    /// coalescer itself: its owner shuts it down), the workspaces, and the
    /// metrics' renderer.
    #[derive(Clone)]
    struct App {
        restarts: Requester<u64, RandomState, Outcome>,
        workspaces: Arc<Workspaces>,
        prometheus: PrometheusHandle,
    }

    /// One restart of workspace `id`: loads its config version as of now,
    /// takes `config.restart`, and fails at `config.fail_rate`.
    async fn restart(
        config: Arc<Config>,
        workspaces: Arc<Workspaces>,
        id: u64,
        context: CycleContext,
    ) -> Outcome {
        let (version, nth) = workspaces.with(id, |w| {
            w.running += 1;
            if w.running > 1 {
                w.overlaps += 1;
            }
            (w.version, w.restarts + w.failed_restarts)
        });
        tokio::time::sleep(config.restart).await;
        let roll = unit(config.seed, id, nth, context.attempt());
        workspaces.with(id, |w| {
            w.running -= 1;
            if roll < config.fail_rate {
                w.failed_restarts += 1;
                Err(RestartError {
                    workspace: id,
                    version,
                })
            } else {
                w.restarts += 1;
                w.loaded = version;
                Ok(version)
            }
        })
    }

    /// A number in `[0, 1)` from the seed and the restart's identity
    /// (splitmix64): the same run fails the same restarts.
    fn unit(seed: u64, id: u64, nth: u64, attempt: u32) -> f64 {
        let mut z = seed ^ id.rotate_left(17) ^ nth.rotate_left(34) ^ u64::from(attempt);
        z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1_u64 << 53) as f64
    }

    /// The coalescer the service runs on.
    pub(super) fn restarts(config: &Arc<Config>, workspaces: &Arc<Workspaces>) -> Restarts {
        let (config, workspaces) = (Arc::clone(config), Arc::clone(workspaces));
        Builder::new()
            .name("restarts")
            .retry(
                Backoff::exponential(config.retry_first, config.retry_max)
                    .max_retries(config.max_retries),
            )
            .concurrency(config.concurrency)
            .build_with_context(move |id: u64, context| {
                restart(Arc::clone(&config), Arc::clone(&workspaces), id, context)
            })
    }

    fn admission(admission: Admission) -> &'static str {
        match admission {
            Admission::Started => "started",
            Admission::Coalesced => "coalesced",
            // `request_after` only; this service does not delay.
            _ => "scheduled",
        }
    }

    fn closed() -> Response {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "shutting down"})),
        )
            .into_response()
    }

    async fn put_config(State(app): State<App>, Path(id): Path<u64>) -> Response {
        let version = app.workspaces.with(id, |w| {
            w.version += 1;
            w.version
        });
        // The bump happens-before the restart that covers this request: that
        // restart loads this version or a later one.
        match app.restarts.request(id) {
            Ok(a) => (
                StatusCode::ACCEPTED,
                Json(json!({"version": version, "admission": admission(a)})),
            )
                .into_response(),
            Err(_) => closed(),
        }
    }

    #[derive(Debug, Deserialize)]
    struct RestartQuery {
        #[serde(default)]
        wait: bool,
    }

    async fn post_restart(
        State(app): State<App>,
        Path(id): Path<u64>,
        Query(query): Query<RestartQuery>,
    ) -> Response {
        if !query.wait {
            return match app.restarts.request(id) {
                Ok(a) => (
                    StatusCode::ACCEPTED,
                    Json(json!({"admission": admission(a)})),
                )
                    .into_response(),
                Err(_) => closed(),
            };
        }
        let wait = app.restarts.request_and_wait(id);
        let Some(a) = wait.admission() else {
            return closed();
        };
        match wait.await {
            Ok(version) => (
                StatusCode::OK,
                Json(json!({"admission": admission(a), "loaded_version": version})),
            )
                .into_response(),
            Err(RunError::Closed | RunError::Aborted) => closed(),
            Err(error) => (
                StatusCode::BAD_GATEWAY,
                Json(json!({"admission": admission(a), "error": error.to_string()})),
            )
                .into_response(),
        }
    }

    async fn get_metrics(State(app): State<App>) -> Response {
        app.restarts.publish_metrics();
        (
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            app.prometheus.render(),
        )
            .into_response()
    }

    async fn healthz() -> &'static str {
        "ok"
    }

    /// The service's routes.
    fn router(app: App) -> Router {
        Router::new()
            .route("/workspaces/{id}/config", put(put_config))
            .route("/workspaces/{id}/restart", post(post_restart))
            .route("/metrics", get(get_metrics))
            .route("/healthz", get(healthz))
            .with_state(app)
    }

    /// What the service did, once it has drained.
    #[derive(Debug)]
    pub(super) struct Report {
        pub(super) stats: coalescer::Stats,
        pub(super) active_keys: usize,
        pub(super) workspaces: HashMap<u64, Workspace>,
    }

    /// Serves on `listener` until `stop` resolves, then stops accepting
    /// connections, lets the requests in flight finish, and drains the
    /// coalescer.
    pub(super) async fn serve(
        listener: TcpListener,
        config: Config,
        prometheus: PrometheusHandle,
        stop: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<Report> {
        let config = Arc::new(config);
        let workspaces = Arc::new(Workspaces::default());
        let restarts = restarts(&config, &workspaces);
        let app = App {
            restarts: restarts.handle(),
            workspaces: Arc::clone(&workspaces),
            prometheus,
        };
        axum::serve(listener, router(app))
            .with_graceful_shutdown(stop)
            .await?;
        restarts.shutdown().await;
        Ok(Report {
            stats: restarts.stats(),
            active_keys: restarts.active_keys(),
            workspaces: workspaces.snapshot(),
        })
    }

    /// The metrics recorder, with buckets for the durations (seconds).
    pub(super) fn recorder() -> metrics_exporter_prometheus::PrometheusRecorder {
        const BUCKETS: [f64; 12] = [
            0.000_1, 0.000_5, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0,
        ];
        PrometheusBuilder::new()
            .set_buckets(&BUCKETS)
            .expect("the bucket list is not empty")
            .build_recorder()
    }

    /// Ctrl-c or SIGTERM.
    async fn terminated() {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM can be listened for");
            tokio::select! {
                _ = ctrl_c => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
    }

    fn parse(args: impl Iterator<Item = String>) -> Result<Config, String> {
        let mut config = Config::default();
        let mut args = args;
        while let Some(flag) = args.next() {
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            let bad = |e: &dyn fmt::Display| format!("{flag} {value}: {e}");
            match flag.as_str() {
                "--addr" => config.addr = value.parse().map_err(|e| bad(&e))?,
                "--fail-rate" => {
                    config.fail_rate = value.parse().map_err(|e| bad(&e))?;
                    if !(0.0..1.0).contains(&config.fail_rate) {
                        return Err(bad(&"must be at least 0 and less than 1"));
                    }
                }
                "--concurrency" => config.concurrency = value.parse().map_err(|e| bad(&e))?,
                "--restart-ms" => {
                    config.restart = Duration::from_millis(value.parse().map_err(|e| bad(&e))?);
                }
                "--max-retries" => config.max_retries = value.parse().map_err(|e| bad(&e))?,
                "--seed" => config.seed = value.parse().map_err(|e| bad(&e))?,
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        Ok(config)
    }

    pub(super) fn main() -> ExitCode {
        run(std::env::args().skip(1))
    }

    /// The service with the options `args`, until ctrl-c or SIGTERM.
    pub(super) fn run(args: impl Iterator<Item = String>) -> ExitCode {
        let config = match parse(args) {
            Ok(config) => config,
            Err(e) => {
                eprintln!("restart_service: {e}");
                return ExitCode::from(2);
            }
        };
        tracing_subscriber::fmt()
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::stderr)
            .init();
        let recorder = recorder();
        let prometheus = recorder.handle();
        metrics::set_global_recorder(recorder).expect("the first recorder");
        let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
        runtime.block_on(async move {
            let listener = match TcpListener::bind(config.addr).await {
                Ok(listener) => listener,
                Err(e) => {
                    eprintln!("restart_service: cannot listen on {}: {e}", config.addr);
                    return ExitCode::FAILURE;
                }
            };
            let addr = listener.local_addr().map_or(config.addr, |a| a);
            eprintln!("restart_service: listening on http://{addr}");
            match serve(listener, config, prometheus, terminated()).await {
                Ok(report) => {
                    eprintln!(
                        "restart_service: drained: {} requests, {} restarts ({} failed) of {} \
                         workspaces, {} keys active",
                        report.stats.requests,
                        report.stats.cycles,
                        report.stats.failures,
                        report.workspaces.len(),
                        report.active_keys
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("restart_service: {e}");
                    ExitCode::FAILURE
                }
            }
        })
    }

    #[cfg(test)]
    mod tests {
        //! The service over real HTTP: a real server on a loopback port, driven
        //! by a real HTTP client (reqwest) from many tasks.

        use std::collections::HashMap;
        use std::sync::OnceLock;
        use std::time::Duration;

        use super::{recorder, run, serve, Config};
        use coalescer_fixtures::prometheus_value;
        use metrics_exporter_prometheus::PrometheusHandle;
        use tokio::net::TcpListener;

        const CLIENTS: u64 = 64;
        const REQUESTS: u64 = 10_000;
        const WORKSPACES: u64 = 200;

        /// The process's one recorder (a test binary of its own: this file's
        /// tests are the only ones in it).
        fn prometheus() -> PrometheusHandle {
            static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
            HANDLE
                .get_or_init(|| {
                    let recorder = recorder();
                    let handle = recorder.handle();
                    metrics::set_global_recorder(recorder).expect("the first recorder");
                    handle
                })
                .clone()
        }

        /// The service as a process of its own (this test binary, running
        /// only [`child_service`]): started with a loopback port of the
        /// OS's choosing, sent three config writes over HTTP, then SIGTERM
        /// while a restart runs. It must stop accepting connections, drain
        /// the coalescer (every accepted request covered), say so, and exit 0.
        #[cfg(unix)]
        #[test]
        fn on_sigterm_it_stops_serving_drains_and_exits_zero() {
            use std::io::{BufRead, BufReader};
            use std::process::{Command, Stdio};

            let mut child = Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "service::tests::child_service",
                    "--ignored",
                    "--nocapture",
                ])
                .env(
                    "RESTART_SERVICE_ARGS",
                    "--addr 127.0.0.1:0 --restart-ms 1000 --fail-rate 0",
                )
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("the test binary runs again as the service");
            let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
            let addr = loop {
                let line = lines
                    .next()
                    .expect("the service said where it listens")
                    .unwrap();
                if let Some(addr) = line.strip_prefix("restart_service: listening on http://") {
                    break addr.to_owned();
                }
            };
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let http = reqwest::Client::new();
                let put = || async {
                    let response = http
                        .put(format!("http://{addr}/workspaces/1/config"))
                        .send()
                        .await
                        .unwrap();
                    assert_eq!(response.status(), 202);
                };
                put().await;
                // The first restart (1 s) must have begun before the next
                // writes, or they fold into it (correctly) and no follow-up
                // is owed: wait until the service reports it running.
                loop {
                    let text = scrape(&http, &format!("http://{addr}")).await;
                    let running = prometheus_value(
                        &text,
                        "coalescer_running_cycles",
                        &[("name", "restarts")],
                    );
                    if running == Some(1.0) {
                        break;
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                }
                put().await;
                put().await;
            });
            // The first restart runs now; the writes after it owe a
            // follow-up, which the drain must run.
            let killed = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .unwrap();
            assert!(killed.success());
            let rest: Vec<String> = lines.map(Result::unwrap).collect();
            let status = child.wait().unwrap();
            assert!(status.success(), "exit {status}: {rest:?}");
            let drained = rest
                .iter()
                .find(|l| l.starts_with("restart_service: drained:"))
                .unwrap_or_else(|| panic!("no drain reported: {rest:?}"));
            assert!(
                drained
                    .contains("3 requests, 2 restarts (0 failed) of 1 workspaces, 0 keys active"),
                "{drained}"
            );
            let refused = std::net::TcpStream::connect(&addr);
            assert!(refused.is_err(), "still accepting connections after exit");
        }

        /// The service process of the SIGTERM test (run by it, with its
        /// options in `RESTART_SERVICE_ARGS`).
        #[test]
        #[ignore = "the SIGTERM test's child process: it runs this itself"]
        fn child_service() {
            let args = std::env::var("RESTART_SERVICE_ARGS").expect("run by the SIGTERM test");
            let code = run(args.split_whitespace().map(str::to_owned));
            assert_eq!(code, std::process::ExitCode::SUCCESS);
        }

        /// What the clients saw.
        #[derive(Debug, Default)]
        struct Tally {
            started: u64,
            coalesced: u64,
            /// PUTs per workspace.
            puts: HashMap<u64, u64>,
            waits_ok: u64,
            waits_failed: u64,
            /// Waits whose restart loaded a version older than the one this
            /// client had written before it asked (a lost update).
            stale_waits: u64,
        }

        impl Tally {
            fn admitted(&mut self, body: &serde_json::Value) {
                match body["admission"].as_str() {
                    Some("started") => self.started += 1,
                    Some("coalesced") => self.coalesced += 1,
                    other => panic!("admission {other:?} in {body}"),
                }
            }

            fn add(&mut self, other: Tally) {
                self.started += other.started;
                self.coalesced += other.coalesced;
                for (id, n) in other.puts {
                    *self.puts.entry(id).or_default() += n;
                }
                self.waits_ok += other.waits_ok;
                self.waits_failed += other.waits_failed;
                self.stale_waits += other.stale_waits;
            }
        }

        /// splitmix64: each client's own sequence of requests.
        fn next(state: &mut u64) -> u64 {
            *state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = *state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        }

        /// One client's share of the requests: half config writes, two
        /// fifths restart requests, one tenth restarts waited for.
        /// The service's `/metrics` page, `base` being `http://host:port`.
        async fn scrape(http: &reqwest::Client, base: &str) -> String {
            let response = http.get(format!("{base}/metrics")).send().await.unwrap();
            response.text().await.unwrap()
        }

        async fn client(http: reqwest::Client, base: String, n: u64, requests: u64) -> Tally {
            let mut tally = Tally::default();
            let mut rng = n;
            // The version of each workspace this client last wrote.
            let mut wrote: HashMap<u64, u64> = HashMap::new();
            for _ in 0..requests {
                let r = next(&mut rng);
                let id = r % WORKSPACES;
                let kind = (r >> 32) % 10;
                let response = match kind {
                    0..=4 => http.put(format!("{base}/workspaces/{id}/config")),
                    5..=8 => http.post(format!("{base}/workspaces/{id}/restart")),
                    _ => http.post(format!("{base}/workspaces/{id}/restart?wait=true")),
                }
                .send()
                .await
                .expect("the service answers");
                let status = response.status().as_u16();
                let body: serde_json::Value = response.json().await.expect("a JSON body");
                tally.admitted(&body);
                match (kind, status) {
                    (0..=4, 202) => {
                        *tally.puts.entry(id).or_default() += 1;
                        wrote.insert(id, body["version"].as_u64().expect("a version"));
                    }
                    (5..=8, 202) => {}
                    (_, 200) => {
                        tally.waits_ok += 1;
                        let loaded = body["loaded_version"].as_u64().expect("a version");
                        if loaded < wrote.get(&id).copied().unwrap_or(0) {
                            tally.stale_waits += 1;
                        }
                    }
                    (_, 502) => tally.waits_failed += 1,
                    _ => panic!("unexpected {status} {body}"),
                }
            }
            tally
        }

        /// 64 clients send 10 000 requests over 200 workspaces; restarts
        /// fail one time in five and are retried, at most 8 at once. Then:
        /// `/metrics` counts exactly the admissions the clients were told;
        /// a waited-for restart never loaded a version older than the
        /// waiter's own last write; after shutdown the coalescer has
        /// drained, every workspace's last restart loaded its last version,
        /// no two restarts of one workspace overlapped, and the cycles'
        /// metrics match what the restarts did.
        #[test]
        fn over_real_http_no_update_is_lost_and_the_metrics_agree() {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let config = Config {
                    addr,
                    fail_rate: 0.2,
                    concurrency: 8,
                    restart: Duration::from_millis(2),
                    retry_first: Duration::from_millis(1),
                    retry_max: Duration::from_millis(4),
                    max_retries: 40,
                    seed: 7,
                };
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let server = tokio::spawn(serve(listener, config, prometheus(), async {
                    let _ = stopped.await;
                }));
                let http = reqwest::Client::new();
                let base = format!("http://{addr}");
                let began = std::time::Instant::now();
                let clients = (0..CLIENTS).map(|n| {
                    let share = REQUESTS / CLIENTS + u64::from(n < REQUESTS % CLIENTS);
                    tokio::spawn(client(http.clone(), base.clone(), n, share))
                });
                let mut tally = Tally::default();
                let driven = tokio::time::timeout(Duration::from_secs(180), async {
                    for c in clients.collect::<Vec<_>>() {
                        tally.add(c.await.expect("a client task"));
                    }
                });
                driven.await.expect("10 000 requests within 180 s");
                let took = began.elapsed();

                // The running service's view, over HTTP.
                let health = http.get(format!("{base}/healthz")).send().await.unwrap();
                assert_eq!(health.status(), 200);
                let bad = http
                    .put(format!("{base}/workspaces/abc/config"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(bad.status(), 400, "an id that is not a number");
                let text = scrape(&http, &base).await;
                let requests = |admission| {
                    prometheus_value(
                        &text,
                        "coalescer_requests_total",
                        &[("name", "restarts"), ("admission", admission)],
                    )
                };
                assert_eq!(tally.started + tally.coalesced, REQUESTS);
                assert_eq!(requests("started"), Some(tally.started as f64), "{text}");
                assert_eq!(
                    requests("coalesced"),
                    Some(tally.coalesced as f64),
                    "{text}"
                );
                assert_eq!(requests("rejected"), None, "nothing was rejected");

                // Shutdown: the server stops, the coalescer drains.
                stop.send(()).unwrap();
                let report = server.await.unwrap().unwrap();
                assert_eq!(report.active_keys, 0, "drained");
                assert_eq!(report.stats.requests, REQUESTS);
                assert_eq!(
                    tally.stale_waits, 0,
                    "a waiter's restart loaded an older version"
                );
                let mut lost = 0;
                for (id, puts) in &tally.puts {
                    let w = &report.workspaces[id];
                    assert_eq!(w.version, *puts, "workspace {id}'s writes");
                    if w.loaded != w.version {
                        lost += 1;
                    }
                }
                assert_eq!(
                    lost, 0,
                    "workspaces whose last restart did not load the last version"
                );
                let (restarts, failed, overlaps) =
                    report.workspaces.values().fold((0, 0, 0), |(r, f, o), w| {
                        (r + w.restarts, f + w.failed_restarts, o + w.overlaps)
                    });
                assert_eq!(overlaps, 0, "two restarts of one workspace at once");

                // The cycles' metrics, as `/metrics` renders them, after the drain.
                let text = prometheus().render();
                let cycles = |outcome| {
                    prometheus_value(
                        &text,
                        "coalescer_cycles_total",
                        &[("name", "restarts"), ("outcome", outcome)],
                    )
                    .unwrap_or(0.0)
                };
                assert_eq!(cycles("ok"), restarts as f64);
                assert_eq!(cycles("failed"), failed as f64);
                assert_eq!(report.stats.cycles, restarts + failed);
                let retries =
                    prometheus_value(&text, "coalescer_retries_total", &[("name", "restarts")]);
                assert_eq!(retries.unwrap_or(0.0), report.stats.retries as f64);
                assert_eq!(
                    prometheus_value(
                        &text,
                        "coalescer_cycle_duration_seconds_count",
                        &[("name", "restarts")]
                    ),
                    Some((restarts + failed) as f64)
                );
                assert_eq!(
                    prometheus_value(&text, "coalescer_running_cycles", &[("name", "restarts")]),
                    Some(0.0)
                );
                println!(
                    "restart_service over HTTP: {REQUESTS} requests ({} started, {} coalesced) \
                     from {CLIENTS} clients over {} workspaces in {took:.2?}; {} restarts \
                     ({restarts} ok, {failed} failed, {} retries, {} gave up); coalescing \
                     ratio {:.1} requests per restart; waits {} ok, {} failed; lost updates {lost}",
                    tally.started,
                    tally.coalesced,
                    tally.puts.len(),
                    restarts + failed,
                    report.stats.retries,
                    report.stats.give_ups,
                    REQUESTS as f64 / (restarts + failed) as f64,
                    tally.waits_ok,
                    tally.waits_failed,
                );
                let excerpt: Vec<&str> = text
                    .lines()
                    .filter(|l| l.starts_with("coalescer_") && !l.contains("_bucket"))
                    .collect();
                println!("/metrics excerpt:\n{}", excerpt.join("\n"));

                // Last (its metrics would add to the ones checked above): a
                // restart that fails and is not retried answers a waiter 502
                // with the error.
                let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
                let addr = listener.local_addr().unwrap();
                let failing = Config {
                    addr,
                    fail_rate: 0.999_999,
                    max_retries: 0,
                    restart: Duration::ZERO,
                    ..Config::default()
                };
                let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
                let server = tokio::spawn(serve(listener, failing, prometheus(), async {
                    let _ = stopped.await;
                }));
                let response = http
                    .post(format!("http://{addr}/workspaces/3/restart?wait=true"))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(response.status(), 502);
                let body: serde_json::Value = response.json().await.unwrap();
                assert_eq!(body["admission"], "started");
                let error = body["error"].as_str().unwrap_or_default();
                assert!(error.contains("workspace 3 did not come back up"), "{body}");
                stop.send(()).unwrap();
                assert_eq!(server.await.unwrap().unwrap().stats.give_ups, 1);
            });
        }
    }
}
