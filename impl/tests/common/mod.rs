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
