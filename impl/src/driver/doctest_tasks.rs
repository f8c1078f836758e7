//! A type-only [`Tasks`] for rustdoc's doctest collection (see the module
//! doc of `driver`): never compiled into the library.

use std::future::Future;
use std::io;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use super::{BoxFuture, Driver};

/// Type-only stand-in.
#[derive(Debug)]
pub struct Tasks;

/// Type-only stand-in.
#[derive(Debug, Default)]
pub struct TasksConfig {}

impl Tasks {
    pub(crate) fn new(_: TasksConfig, _: super::Needs) -> Self {
        Tasks
    }

    pub(crate) fn poll_drained(&self, _: &mut Context<'_>) -> Poll<()> {
        Poll::Ready(())
    }
}

impl Driver for Tasks {
    type Config = TasksConfig;
    const DROP_ABORTS: bool = true;

    fn spawn(&self, _: BoxFuture) -> io::Result<()> {
        Ok(())
    }

    fn has_timers(&self) -> bool {
        false
    }

    fn until(&self, _: Option<Instant>) -> impl Future<Output = ()> + Send + '_ {
        std::future::ready(())
    }

    fn drain(&self) {}

    fn on_drop(&self, close: impl FnOnce()) {
        close();
    }
}

pub(crate) async fn within<T>(_: Duration, f: impl Future<Output = T>) -> Option<T> {
    Some(f.await)
}

/// Type-only stand-in.
pub fn doc_block_on<F: Future>(_: F) -> F::Output {
    unreachable!("type-only stand-in for doctest collection")
}
