//! The metrics (feature `metrics`; `docs/metrics.md`), as a Prometheus
//! exporter renders them: every request by admission, every cycle by
//! outcome, retries and give-ups, the durations, and the sampled gauges —
//! on a current-thread runtime under a recorder local to the test, with
//! tokio's paused clock, so every count and duration is exact.
#![cfg(all(feature = "metrics", not(loom)))]

use std::sync::Arc;
use std::time::Duration;

use coalescer::{Backoff, Builder, Closed};
use coalescer_fixtures::prometheus_value;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::Semaphore;

mod common;

/// Runs `test` on a paused current-thread runtime under a fresh Prometheus
/// recorder; returns its handle, to render.
fn recorded<F: std::future::Future<Output = ()>>(
    test: impl FnOnce(PrometheusHandle) -> F,
) -> PrometheusHandle {
    let recorder = PrometheusBuilder::new()
        .set_buckets(&[0.5, 1.0, 5.0, 30.0])
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    let h = handle.clone();
    metrics::with_local_recorder(&recorder, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(test(h));
    });
    handle
}

fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut all = vec![("name", "metered")];
    all.extend_from_slice(labels);
    prometheus_value(text, name, &all).unwrap_or_else(|| panic!("no {name}{labels:?} in\n{text}"))
}

/// One run through every outcome: key 1 succeeds after 2 s (and absorbs two
/// coalesced requests), key 2 fails twice, key 3 panics twice, key 4 times
/// out twice (each retried once, then given up on), keys 5 and 6 run while
/// the gauges are sampled; a request after shutdown is rejected.
#[test]
fn every_request_and_cycle_is_counted_and_timed() {
    let handle = recorded(|handle| async move {
        common::quiet_injected_panics();
        let gate = Arc::new(Semaphore::new(0));
        let g = Arc::clone(&gate);
        let c = Builder::new()
            .name("metered")
            .retry(
                Backoff::exponential(Duration::from_secs(1), Duration::from_secs(1)).max_retries(1),
            )
            .timeout(Duration::from_secs(10))
            .build(move |key: u32| {
                let g = Arc::clone(&g);
                async move {
                    match key {
                        1 => tokio::time::sleep(Duration::from_secs(2)).await,
                        2 => {
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            return Err("down");
                        }
                        3 => std::panic::panic_any(common::INJECTED),
                        4 => tokio::time::sleep(Duration::from_secs(60)).await,
                        _ => g.acquire().await.unwrap().forget(),
                    }
                    Ok(())
                }
            });
        let first = c.request_and_wait(1);
        c.request(1).unwrap();
        c.request(1).unwrap();
        first.await.unwrap();
        // Sampled as the cycle ended, with no call of `publish_metrics`.
        let text = handle.render();
        assert_eq!(
            value(
                &text,
                "coalescer_requests_total",
                &[("admission", "coalesced")]
            ),
            2.0
        );
        assert_eq!(
            value(&text, "coalescer_cycles_total", &[("outcome", "ok")]),
            1.0
        );
        assert!(c.request_and_wait(2).await.is_err());
        assert!(c.request_and_wait(3).await.is_err());
        assert!(c.request_and_wait(4).await.is_err());

        // Two cycles held running for 3 s, sampled.
        c.request(5).unwrap();
        c.request(6).unwrap();
        tokio::task::yield_now().await;
        tokio::time::advance(Duration::from_secs(3)).await;
        c.publish_metrics();
        let text = handle.render();
        assert_eq!(value(&text, "coalescer_running_cycles", &[]), 2.0);
        assert_eq!(value(&text, "coalescer_active_keys", &[]), 2.0);
        assert_eq!(value(&text, "coalescer_pending_keys", &[]), 0.0);
        assert_eq!(value(&text, "coalescer_unfinished_work_seconds", &[]), 6.0);
        assert_eq!(
            value(&text, "coalescer_longest_running_cycle_seconds", &[]),
            3.0
        );
        // A follow-up owed to key 5, and a delayed request for key 7.
        c.request(5).unwrap();
        c.request_after(7, Duration::from_secs(3600)).unwrap();
        c.publish_metrics();
        let text = handle.render();
        assert_eq!(value(&text, "coalescer_scheduled_keys", &[]), 1.0);
        assert_eq!(
            value(
                &text,
                "coalescer_requests_total",
                &[("admission", "delayed")]
            ),
            1.0
        );

        gate.add_permits(4); // keys 5 and 6, key 5's follow-up, key 7
        c.shutdown().await;
        assert_eq!(c.request(9), Err(Closed));
        c.publish_metrics();
    });
    let text = handle.render();
    let requests = |admission| {
        value(
            &text,
            "coalescer_requests_total",
            &[("admission", admission)],
        )
    };
    // Keys 1 to 6 started once each, the delayed key 7 at shutdown (its
    // request, falling due, is counted as delayed, not started).
    assert_eq!(requests("started"), 6.0);
    assert_eq!(requests("coalesced"), 3.0);
    assert_eq!(requests("rejected"), 1.0);
    let cycles = |outcome| value(&text, "coalescer_cycles_total", &[("outcome", outcome)]);
    // Ok: key 1, keys 5 and 6, key 5's follow-up, key 7 in the drain.
    assert_eq!(cycles("ok"), 5.0);
    assert_eq!(cycles("failed"), 2.0);
    assert_eq!(cycles("panicked"), 2.0);
    assert_eq!(cycles("timed_out"), 2.0);
    assert_eq!(value(&text, "coalescer_retries_total", &[]), 3.0);
    assert_eq!(value(&text, "coalescer_give_ups_total", &[]), 3.0);
    assert_eq!(
        value(&text, "coalescer_cycle_duration_seconds_count", &[]),
        11.0
    );
    // 2 (key 1) + 1 + 1 (key 2) + 0 + 0 (key 3) + 10 + 10 (key 4) + 3 + 3
    // (keys 5 and 6) + 0 + 0 (key 5's follow-up, key 7).
    assert_eq!(
        value(&text, "coalescer_cycle_duration_seconds_sum", &[]),
        30.0
    );
    // No limit and no debounce: every cycle began as soon as it was due.
    assert_eq!(
        value(&text, "coalescer_queue_duration_seconds_count", &[]),
        11.0
    );
    assert_eq!(
        value(&text, "coalescer_queue_duration_seconds_sum", &[]),
        0.0
    );
    for gauge in [
        "coalescer_running_cycles",
        "coalescer_active_keys",
        "coalescer_pending_keys",
        "coalescer_waiting_keys",
        "coalescer_scheduled_keys",
        "coalescer_unfinished_work_seconds",
        "coalescer_longest_running_cycle_seconds",
    ] {
        assert_eq!(value(&text, gauge, &[]), 0.0, "{gauge} after the drain");
    }
}

/// With a concurrency limit of 1, a key that waits for the permit is
/// counted as waiting, and the wait is its queue duration.
#[test]
fn the_wait_for_a_permit_is_the_queue_duration() {
    let handle = recorded(|handle| async move {
        let c = Builder::new()
            .name("metered")
            .concurrency(1)
            .build(|_: u32| tokio::time::sleep(Duration::from_secs(4)));
        let a = c.request_and_wait(1);
        let b = c.request_and_wait(2);
        tokio::task::yield_now().await;
        c.publish_metrics();
        let text = handle.render();
        assert_eq!(value(&text, "coalescer_waiting_keys", &[]), 1.0);
        assert_eq!(value(&text, "coalescer_pending_keys", &[]), 1.0);
        a.await.unwrap();
        b.await.unwrap();
        c.shutdown().await;
    });
    let text = handle.render();
    assert_eq!(
        value(&text, "coalescer_queue_duration_seconds_count", &[]),
        2.0
    );
    assert_eq!(
        value(&text, "coalescer_queue_duration_seconds_sum", &[]),
        4.0
    );
}

/// A cycle cancelled mid-flight because the async coalescer was dropped
/// ends as `aborted`: counted, and no longer running.
#[test]
fn a_cycle_cancelled_by_a_drop_is_counted_as_aborted() {
    let handle = recorded(|_| async move {
        let c = Builder::new()
            .name("metered")
            .build(|_: u32| std::future::pending::<()>());
        let waiter = c.handle().request_and_wait(1);
        tokio::task::yield_now().await;
        drop(c);
        assert_eq!(waiter.await, Err(coalescer::RunError::Aborted));
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    });
    let text = handle.render();
    assert_eq!(
        value(&text, "coalescer_cycles_total", &[("outcome", "aborted")]),
        1.0
    );
    assert_eq!(
        prometheus_value(
            &text,
            "coalescer_cycles_total",
            &[("name", "metered"), ("outcome", "ok")]
        ),
        None
    );
    assert_eq!(
        value(&text, "coalescer_cycle_duration_seconds_count", &[]),
        1.0
    );
}
