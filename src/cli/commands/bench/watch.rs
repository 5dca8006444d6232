//! `raftkv bench watch`: what many watchers cost. Opens `--watchers` watch streams on one key over
//! `--connections` connections (at least one per 100 streams), then writes that key `--ops` times, one write at a time, and
//! measures for every write how long after it was sent each watcher received it (delivery) and
//! when the last one did (fan-out). With `--hold` the streams stay open and idle that long
//! first, for reading the node's memory from outside (`scripts/watch-cost.sh`).

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde_json::json;
use tokio_stream::StreamExt;

use super::{new_histogram, target, BenchArgs, TargetKind};
use crate::cli::client::CliError;
use crate::cli::exit;
use crate::proto::v1::kv_client::KvClient;
use crate::proto::v1::{PutRequest, WatchRequest};

/// The key every watcher follows and every write changes.
const KEY: &str = "bench/watched";

pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    if args.target != TargetKind::Raftkv {
        return Err(CliError::new(
            exit::USAGE,
            "bench watch measures raftkv only",
        ));
    }
    let writes = args.ops.unwrap_or(100);
    if args.watchers == 0 || writes == 0 {
        return Err(CliError::new(
            exit::USAGE,
            "--watchers and --ops must be at least 1",
        ));
    }
    let endpoints = target::resolve_endpoints(&args).await?;
    // A server takes about 200 concurrent streams per connection (hyper's default), so the
    // watchers get a connection per 100 of them at least.
    let connections = args.connections.max(args.watchers.div_ceil(100));
    let mut channels = Vec::new();
    for i in 0..connections {
        channels.push(target::raftkv_channel(&args, &endpoints[i % endpoints.len()]).await?);
    }

    let opened = Instant::now();
    // When each write was sent, by revision.
    let mut sent: Vec<(u64, Instant)> = Vec::with_capacity(writes as usize);
    let mut watchers = Vec::with_capacity(args.watchers);
    for i in 0..args.watchers {
        let mut client = KvClient::new(channels[i % channels.len()].clone());
        let request = WatchRequest {
            start: KEY.into(),
            ..Default::default()
        };
        let stream = client
            .watch(request)
            .await
            .map_err(|s| CliError::new(exit::UNAVAILABLE, format!("watch {i}: {}", s.message())))?
            .into_inner();
        watchers.push(tokio::spawn(async move {
            let mut stream = stream;
            let mut received = Vec::new();
            while received.len() < writes as usize {
                match stream.next().await {
                    Some(Ok(response)) if !response.events.is_empty() => {
                        received.push((response.revision, Instant::now()))
                    }
                    Some(Ok(_)) => {}
                    _ => break,
                }
            }
            received
        }));
    }
    let open_secs = opened.elapsed().as_secs_f64();
    eprintln!(
        "{} watch streams open in {open_secs:.2} s; holding them {:?}",
        args.watchers, args.hold
    );
    tokio::time::sleep(args.hold).await;

    let value = vec![b'v'; args.value_size];
    let mut writer = KvClient::new(channels[0].clone());
    for _ in 0..writes {
        let started = Instant::now();
        let request = PutRequest {
            lease: 0,
            key: KEY.into(),
            value: value.clone(),
            ttl_ms: 0,
        };
        let revision = writer
            .put(request)
            .await
            .map_err(|s| CliError::new(exit::UNAVAILABLE, format!("put: {}", s.message())))?
            .into_inner()
            .revision;
        sent.push((revision, started));
    }

    let mut delivery = new_histogram();
    let mut last_by_revision: std::collections::BTreeMap<u64, Duration> = Default::default();
    let mut missing = 0u64;
    for watcher in watchers {
        let seen = tokio::time::timeout(Duration::from_secs(60), watcher)
            .await
            .map_err(|_| CliError::new(exit::UNAVAILABLE, "a watcher got nothing for 60 s"))?
            .map_err(|e| CliError::new(exit::UNAVAILABLE, format!("a watcher failed: {e}")))?;
        missing += writes.saturating_sub(seen.len() as u64);
        // Matched only now: a watcher may hear of a write before its writer has the answer.
        let seen = seen.into_iter().filter_map(|(revision, at)| {
            let (_, when) = sent.iter().find(|(r, _)| *r == revision)?;
            Some((revision, at.saturating_duration_since(*when)))
        });
        for (revision, latency) in seen {
            delivery.saturating_record(latency.as_micros() as u64);
            let last = last_by_revision.entry(revision).or_default();
            *last = (*last).max(latency);
        }
    }
    let mut fan_out = new_histogram();
    for latency in last_by_revision.values() {
        fan_out.saturating_record(latency.as_micros() as u64);
    }
    print(&args, writes, open_secs, &delivery, &fan_out, missing);
    Ok(())
}

fn ms(histogram: &Histogram<u64>, quantile: f64) -> f64 {
    histogram.value_at_quantile(quantile) as f64 / 1000.0
}

fn print(
    args: &BenchArgs,
    writes: u64,
    open_secs: f64,
    delivery: &Histogram<u64>,
    fan_out: &Histogram<u64>,
    missing: u64,
) {
    if args.json {
        let report = json!({
            "workload": "watch",
            "watchers": args.watchers,
            "writes": writes,
            "open_secs": open_secs,
            "delivery_ms": {"p50": ms(delivery, 0.5), "p99": ms(delivery, 0.99), "max": ms(delivery, 1.0)},
            "fan_out_ms": {"p50": ms(fan_out, 0.5), "p99": ms(fan_out, 0.99), "max": ms(fan_out, 1.0)},
            "missing": missing,
        });
        println!("{report}");
    } else {
        println!(
            "watch: {} watchers, {writes} writes of {} bytes, streams opened in {open_secs:.2} s",
            args.watchers, args.value_size
        );
        println!(
            "delivery (write sent → one watcher has it): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(delivery, 0.5),
            ms(delivery, 0.99),
            ms(delivery, 1.0)
        );
        println!(
            "fan-out (write sent → every watcher has it): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            ms(fan_out, 0.5),
            ms(fan_out, 0.99),
            ms(fan_out, 1.0)
        );
        println!("events not received: {missing}");
    }
}
