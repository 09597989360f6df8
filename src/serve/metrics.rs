//! The counters behind `GET /metrics`, in Prometheus' text format. Five series do not need the
//! `prometheus` crate's registries and protobuf; a mutex and atomics do.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// Latency histogram bucket bounds, seconds.
const LATENCY: [f64; 12] = [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];
/// Batch-size histogram bucket bounds.
const BATCH: [usize; 7] = [1, 2, 4, 8, 16, 32, 64];

/// A histogram: bucket counts, sum, count.
type Histogram<const N: usize> = ([u64; N], f64, u64);

#[derive(Default)]
pub struct Metrics {
    /// (route, status) → count.
    requests: Mutex<BTreeMap<(String, u16), u64>>,
    /// route → (bucket counts, sum of seconds, count).
    latency: Mutex<BTreeMap<String, Histogram<{ LATENCY.len() }>>>,
    batches: Mutex<([u64; BATCH.len()], u64, u64)>,
    pub queue_depth: AtomicUsize,
    /// Refused for a full queue.
    pub rejected: AtomicU64,
    /// Refused for a client over its rate.
    pub rate_limited: AtomicU64,
    /// Dropped in the queue because their client had gone.
    pub cancelled: AtomicU64,
}

impl Metrics {
    pub fn observe(&self, route: &str, status: u16, seconds: f64) {
        *self
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((route.to_string(), status))
            .or_default() += 1;
        let mut lat = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let e = lat.entry(route.to_string()).or_insert(([0; LATENCY.len()], 0.0, 0));
        for (b, &bound) in e.0.iter_mut().zip(&LATENCY) {
            if seconds <= bound {
                *b += 1;
            }
        }
        e.1 += seconds;
        e.2 += 1;
    }

    pub fn observe_batch(&self, size: usize) {
        let mut b = self.batches.lock().unwrap_or_else(|e| e.into_inner());
        for (c, &bound) in b.0.iter_mut().zip(&BATCH) {
            if size <= bound {
                *c += 1;
            }
        }
        b.1 += size as u64;
        b.2 += 1;
    }

    pub fn render(&self) -> String {
        let mut s = String::new();
        s += "# HELP stargan_http_requests_total Requests answered, by route and status.\n";
        s += "# TYPE stargan_http_requests_total counter\n";
        for ((route, status), n) in self.requests.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            let _ = writeln!(s, "stargan_http_requests_total{{route=\"{route}\",status=\"{status}\"}} {n}");
        }
        s += "# HELP stargan_http_request_seconds Time to answer, by route.\n";
        s += "# TYPE stargan_http_request_seconds histogram\n";
        for (route, (buckets, sum, count)) in self.latency.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            for (b, bound) in buckets.iter().zip(&LATENCY) {
                let _ = writeln!(
                    s,
                    "stargan_http_request_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {b}"
                );
            }
            let _ =
                writeln!(s, "stargan_http_request_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {count}");
            let _ = writeln!(s, "stargan_http_request_seconds_sum{{route=\"{route}\"}} {sum}");
            let _ = writeln!(s, "stargan_http_request_seconds_count{{route=\"{route}\"}} {count}");
        }
        let (buckets, sum, count) = *self.batches.lock().unwrap_or_else(|e| e.into_inner());
        s += "# HELP stargan_batch_size Images per G batch.\n# TYPE stargan_batch_size histogram\n";
        for (b, bound) in buckets.iter().zip(&BATCH) {
            let _ = writeln!(s, "stargan_batch_size_bucket{{le=\"{bound}\"}} {b}");
        }
        let _ = writeln!(s, "stargan_batch_size_bucket{{le=\"+Inf\"}} {count}\nstargan_batch_size_sum {sum}\nstargan_batch_size_count {count}");
        let gauge = |s: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        gauge(
            &mut s,
            "stargan_queue_depth",
            "Jobs waiting for the inference worker.",
            "gauge",
            self.queue_depth.load(Ordering::SeqCst) as u64,
        );
        gauge(
            &mut s,
            "stargan_rejected_total",
            "Requests refused with 503 for a full queue.",
            "counter",
            self.rejected.load(Ordering::Relaxed),
        );
        gauge(
            &mut s,
            "stargan_rate_limited_total",
            "Requests refused with 429.",
            "counter",
            self.rate_limited.load(Ordering::Relaxed),
        );
        gauge(
            &mut s,
            "stargan_cancelled_total",
            "Jobs dropped because their client had gone.",
            "counter",
            self.cancelled.load(Ordering::Relaxed),
        );
        s
    }
}
