//! Tracing with the key: a span per cycle (target `coalescer`) with the
//! coalescer's name, the key, the cycle number and the attempt, closed with
//! its outcome and duration; and events that carry the key. Recorded by a
//! subscriber layer of the test's own on a current-thread runtime with
//! tokio's paused clock (every task polled on this thread, in its
//! subscriber; durations exact).

#![cfg(not(loom))]

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use coalescer::{Backoff, Builder};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

mod common;

/// The fields of one span or event, as text.
type Fields = BTreeMap<String, String>;

#[derive(Default)]
struct Seen {
    /// Spans named `cycle`, in the order they closed, with every field.
    cycles: Vec<Fields>,
    /// Events of target `coalescer`, with every field (`message` included)
    /// and, under `span.key`, the key of the cycle span they are inside.
    events: Vec<Fields>,
}

#[derive(Clone, Default)]
struct Recorder(Arc<Mutex<Seen>>);

struct Collect<'a>(&'a mut Fields);

impl Visit for Collect<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl<S: Subscriber + for<'a> LookupSpan<'a>> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, ctx: Context<'_, S>) {
        let mut fields = Fields::new();
        attrs.record(&mut Collect(&mut fields));
        ctx.span(id).unwrap().extensions_mut().insert(fields);
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, ctx: Context<'_, S>) {
        let span = ctx.span(id).unwrap();
        let mut extensions = span.extensions_mut();
        values.record(&mut Collect(extensions.get_mut::<Fields>().unwrap()));
    }

    fn on_event(&self, event: &Event<'_>, ctx: Context<'_, S>) {
        if event.metadata().target() != "coalescer" {
            return;
        }
        let mut fields = Fields::new();
        event.record(&mut Collect(&mut fields));
        if let Some(span) = ctx.event_span(event) {
            if let Some(key) = span.extensions().get::<Fields>().and_then(|f| f.get("key")) {
                fields.insert("span.key".to_owned(), key.clone());
            }
        }
        self.0.lock().unwrap().events.push(fields);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        let span = ctx.span(&id).unwrap();
        if span.name() == "cycle" && span.metadata().target() == "coalescer" {
            let fields = span.extensions().get::<Fields>().cloned().unwrap();
            self.0.lock().unwrap().cycles.push(fields);
        }
    }
}

/// Runs `test` on a paused current-thread runtime under a subscriber that
/// records into the returned `Seen`.
fn traced<F: std::future::Future<Output = ()>>(test: impl FnOnce() -> F) -> Seen {
    let recorder = Recorder::default();
    let subscriber = tracing_subscriber::registry().with(recorder.clone());
    tracing::subscriber::with_default(subscriber, || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(test());
    });
    let seen = std::mem::take(&mut *recorder.0.lock().unwrap());
    seen
}

fn event<'a>(seen: &'a Seen, message: &str) -> Vec<&'a Fields> {
    seen.events
        .iter()
        .filter(|e| e.get("message").is_some_and(|m| m.starts_with(message)))
        .collect()
}

fn fields(pairs: &[(&str, &str)]) -> Fields {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A cycle that fails once and is retried, then succeeds: two spans, with
/// the name, the key (its `Debug`), the cycle number, the attempt, the
/// outcome and the duration on tokio's clock; the events of the request,
/// the failure and the retry carry the key, inside the cycle's span where
/// they happen in it.
#[test]
fn each_cycle_has_a_span_with_the_key_and_the_events_carry_it() {
    let seen = traced(|| async {
        let failed_once = Arc::new(Mutex::new(false));
        let c = Builder::new()
            .name("restarts")
            .retry(Backoff::exponential(
                Duration::from_secs(1),
                Duration::from_secs(1),
            ))
            .build(move |_: String| {
                let failed_once = Arc::clone(&failed_once);
                async move {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let mut failed = failed_once.lock().unwrap();
                    if *failed {
                        Ok(())
                    } else {
                        *failed = true;
                        Err("the restart failed")
                    }
                }
            });
        let wait = c.request_and_wait("acme".to_owned());
        c.request("acme".to_owned()).unwrap();
        wait.await.unwrap();
        c.shutdown().await;
    });
    let common = [("coalescer", "restarts"), ("key", "\"acme\"")];
    let mut first = fields(&common);
    first.extend(fields(&[
        ("cycle", "1"),
        ("attempt", "0"),
        ("outcome", "failed"),
        ("duration_seconds", "0.25"),
    ]));
    let mut second = fields(&common);
    second.extend(fields(&[
        ("cycle", "2"),
        ("attempt", "1"),
        ("outcome", "ok"),
        ("duration_seconds", "0.25"),
    ]));
    assert_eq!(seen.cycles, vec![first, second]);

    for (message, in_cycle) in [
        ("started", false),
        ("coalesced", false),
        ("cycle failed", true),
        ("retrying", true),
        ("reclaimed", false),
    ] {
        let events = event(&seen, message);
        assert_eq!(events.len(), 1, "{message}: {:?}", seen.events);
        let e = events[0];
        assert_eq!(
            e.get("key").map(String::as_str),
            Some("\"acme\""),
            "{message}"
        );
        assert_eq!(e.get("coalescer").map(String::as_str), Some("restarts"));
        assert_eq!(
            e.get("span.key").map(String::as_str),
            in_cycle.then_some("\"acme\""),
            "{message}: inside the cycle's span or not"
        );
    }
}

/// A panicking cycle's span closes as `panicked`, the default report
/// carries the key, and a retry policy's give-up does too; a cycle cut
/// short by the timeout closes as `timed_out`.
#[test]
fn panics_give_ups_and_timeouts_are_traced_with_the_key() {
    let seen = traced(|| async {
        common::quiet_injected_panics();
        let c = Builder::new()
            .retry(
                Backoff::exponential(Duration::from_secs(1), Duration::from_secs(1)).max_retries(0),
            )
            .timeout(Duration::from_secs(5))
            .build(|key: u32| async move {
                match key {
                    1 => std::panic::panic_any(common::INJECTED),
                    _ => tokio::time::sleep(Duration::from_secs(60)).await,
                }
            });
        let _ = c.request_and_wait(1).await;
        let _ = c.request_and_wait(2).await;
        c.shutdown().await;
    });
    let outcomes: Vec<_> = seen
        .cycles
        .iter()
        .map(|f| {
            (
                f["key"].as_str(),
                f["outcome"].as_str(),
                f["coalescer"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("1", "panicked", "coalescer"),
            ("2", "timed_out", "coalescer")
        ]
    );
    assert_eq!(seen.cycles[1]["duration_seconds"], "5.0");
    let panicked = event(&seen, "cycle panicked");
    assert_eq!(panicked.len(), 1);
    assert_eq!(panicked[0]["key"], "1");
    let gave_up: Vec<_> = event(&seen, "gave up retrying")
        .iter()
        .map(|e| e["key"].clone())
        .collect();
    assert_eq!(gave_up, ["1", "2"]);
    assert_eq!(event(&seen, "cycle timed out")[0]["key"], "2");
}

/// A key type without `Debug` still works, built with
/// `Builder::opaque_keys`: its spans and events show the key as `_`.
#[test]
fn a_key_that_cannot_print_is_shown_as_an_underscore() {
    #[derive(Clone, PartialEq, Eq, Hash)]
    struct Secret(u64);

    let seen = traced(|| async {
        let c = Builder::opaque_keys().build(|_: Secret| async {});
        c.request_and_wait(Secret(9)).await.unwrap();
        c.shutdown().await;
    });
    assert_eq!(seen.cycles.len(), 1);
    assert_eq!(seen.cycles[0]["key"], "_");
    assert_eq!(event(&seen, "started")[0]["key"], "_");
}
