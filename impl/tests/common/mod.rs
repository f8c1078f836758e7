//! Shared by the ordinary test files: the workspace's fixtures
//! (`coalescer-fixtures`), under the names the tests use, and the macro
//! that runs an async test on both tokio runtimes (`#[macro_use]`).

#[allow(
    unused_imports,
    reason = "not every test binary raises every kind of panic; every one's hook knows them"
)]
pub(crate) use coalescer_fixtures::{quiet_injected_panics, PanicsWhenDropped, INJECTED};

/// Generates `NAME::current_thread` and `NAME::multi_thread` tests from an
/// `async fn NAME()`.
#[allow(
    unused_macros,
    reason = "only the async test files run tests on both runtimes"
)]
macro_rules! on_both_runtimes {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[test]
            fn current_thread() {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(super::$name());
            }

            #[test]
            fn multi_thread() {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(super::$name());
            }
        }
    )*};
}

/// Per cycle: its key, and when it began (ms after `t0`), for the tests on
/// tokio's paused clock (`debounce.rs`, `delayed.rs`).
#[allow(dead_code, reason = "only the paused-clock test files log cycles")]
pub(crate) type Log = std::sync::Arc<std::sync::Mutex<Vec<(u32, u128)>>>;

/// An async coalescer with `configure`d options whose cycles log their key
/// and start (in ms after `t0`) and last `cycle` each.
#[allow(dead_code, reason = "only the paused-clock test files log cycles")]
pub(crate) fn logged(
    t0: tokio::time::Instant,
    cycle: std::time::Duration,
    configure: impl FnOnce(coalescer::Builder<u32>) -> coalescer::Builder<u32>,
) -> (coalescer::Coalescer<u32>, Log) {
    let log = Log::default();
    let l = std::sync::Arc::clone(&log);
    let c = configure(coalescer::Coalescer::builder()).build(move |key: u32| {
        l.lock()
            .unwrap()
            .push((key, (tokio::time::Instant::now() - t0).as_millis()));
        tokio::time::sleep(cycle)
    });
    (c, log)
}
