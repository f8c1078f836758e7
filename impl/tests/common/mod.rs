//! Shared by the ordinary test files: the workspace's fixtures
//! (`coalescer-fixtures`), under the names the tests use.

#[allow(
    unused_imports,
    reason = "not every test binary raises every kind of panic; every one's hook knows them"
)]
pub(crate) use coalescer_fixtures::{quiet_injected_panics, PanicsWhenDropped, INJECTED};
