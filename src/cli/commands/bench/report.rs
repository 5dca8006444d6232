//! The bench report (text or JSON) and the live progress bar.

use std::collections::BTreeMap;
use std::time::Instant;

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::{BenchArgs, Workload};

/// Latencies in milliseconds.
#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub target: String,
    pub workload: String,
    pub stale: bool,
    pub clients: usize,
    pub connections: usize,
    pub endpoints: Vec<String>,
    pub key_size: usize,
    pub value_size: usize,
    pub keys: u64,
    pub seconds: f64,
    pub ops: u64,
    pub ops_per_sec: f64,
    pub latency_ms: Latency,
    pub errors: BTreeMap<String, u64>,
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

impl Report {
    pub fn new(
        args: &BenchArgs,
        endpoints: &[String],
        latency: &Histogram<u64>,
        errors: BTreeMap<String, u64>,
        seconds: f64,
    ) -> Self {
        let ok = latency.len();
        let failed: u64 = errors.values().sum();
        let workload = match args.workload {
            Workload::Mixed => format!("mixed (read ratio {})", args.read_ratio),
            Workload::Batch => format!("batch (size {})", args.batch_size),
            Workload::Scan => format!("scan (limit {})", args.scan_limit),
            Workload::Watch => "watch".to_string(),
            other => format!("{other:?}").to_lowercase(),
        };
        Report {
            target: format!("{:?}", args.target).to_lowercase(),
            workload,
            stale: args.stale,
            clients: args.clients,
            connections: args.connections,
            endpoints: endpoints.to_vec(),
            key_size: args.key_size,
            value_size: args.value_size,
            keys: args.keys,
            seconds,
            ops: ok,
            ops_per_sec: if seconds > 0.0 {
                ok as f64 / seconds
            } else {
                0.0
            },
            latency_ms: Latency {
                p50: ms(latency.value_at_quantile(0.50)),
                p90: ms(latency.value_at_quantile(0.90)),
                p99: ms(latency.value_at_quantile(0.99)),
                p999: ms(latency.value_at_quantile(0.999)),
                max: ms(latency.max()),
                mean: latency.mean() / 1000.0,
            },
            errors: if failed == 0 { BTreeMap::new() } else { errors },
        }
    }

    pub fn print(&self, json: bool) {
        if json {
            match serde_json::to_string(self) {
                Ok(text) => println!("{text}"),
                Err(e) => eprintln!("error: cannot encode the report: {e}"),
            }
            return;
        }
        let reads = if self.stale { " (stale reads)" } else { "" };
        println!("target        {}  {}{reads}", self.target, self.workload);
        println!(
            "load          {} clients over {} connections to {}",
            self.clients,
            self.connections,
            self.endpoints.join(",")
        );
        println!(
            "data          {} keys of {} B, values of {} B",
            self.keys, self.key_size, self.value_size
        );
        println!("measured      {} ops in {:.2} s", self.ops, self.seconds);
        println!("throughput    {:.0} ops/s", self.ops_per_sec);
        let l = &self.latency_ms;
        println!(
            "latency (ms)  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}",
            l.p50, l.p90, l.p99, l.p999, l.max
        );
        if self.errors.is_empty() {
            println!("errors        none");
        } else {
            let list: Vec<String> = self
                .errors
                .iter()
                .map(|(code, n)| format!("{code} {n}"))
                .collect();
            println!("errors        {}", list.join(", "));
        }
    }
}

/// A bar over warm-up plus measurement (or over --ops); hidden when stderr is not a terminal
/// or the report is JSON.
pub fn progress_bar(args: &BenchArgs) -> ProgressBar {
    if args.json {
        return ProgressBar::hidden();
    }
    let length = match args.ops {
        Some(ops) => ops,
        None => (args.warmup + args.duration).as_millis() as u64,
    };
    let bar = ProgressBar::new(length);
    if let Ok(style) = ProgressStyle::with_template("{spinner} [{bar:40}] {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar
}

pub fn tick(
    bar: &ProgressBar,
    args: &BenchArgs,
    started: Instant,
    measure_from: Instant,
    done: u64,
) {
    let now = Instant::now();
    if now < measure_from {
        bar.set_message("warming up");
    } else {
        let secs = now.duration_since(measure_from).as_secs_f64().max(0.001);
        bar.set_message(format!("{done} ops, {:.0} ops/s", done as f64 / secs));
    }
    match args.ops {
        Some(_) => bar.set_position(done),
        None => bar.set_position(now.duration_since(started).as_millis() as u64),
    }
}
