//! `raftkv bench`: a closed-loop load generator with a real latency histogram.
//!
//! `--clients` tasks each keep one request in flight over `--connections` shared gRPC channels,
//! for `--duration` (or `--ops`) after `--warmup`. The same loop drives raftkv or, with the
//! `etcd` cargo feature, an etcd v3 cluster, so both are measured by one client with one method.

mod report;
mod target;
mod watch;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use hdrhistogram::Histogram;

use crate::cli::client::CliError;
use crate::cli::exit;
use crate::text::parse_duration;
pub use report::Report;
use target::Connection;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Single-key writes.
    Put,
    /// Single-key reads (linearizable unless --stale).
    Get,
    /// Reads and writes mixed by --read-ratio.
    Mixed,
    /// Atomic multi-key writes of --batch-size keys.
    Batch,
    /// Range reads of --scan-limit keys from a random start.
    Scan,
    /// --watchers watch streams on one key, then --ops writes of it: delivery and fan-out
    /// latency (raftkv only).
    Watch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetKind {
    Raftkv,
    /// An etcd v3 cluster (needs a build with `--features etcd`).
    Etcd,
}

#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// What to run.
    #[arg(value_enum)]
    pub workload: Workload,

    /// Serve reads from the answering node's local copy (etcd: serializable reads).
    #[arg(long)]
    pub stale: bool,

    /// Fraction of reads in the mixed workload.
    #[arg(long, default_value_t = 0.9)]
    pub read_ratio: f64,

    /// Keys per batch in the batch workload.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,

    /// Keys per range read in the scan workload.
    #[arg(long, default_value_t = 100)]
    pub scan_limit: u32,

    /// Concurrent requests in flight (one per client task).
    #[arg(long, default_value_t = 16)]
    pub clients: usize,

    /// gRPC connections shared by the clients, spread over the endpoints.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,

    /// Size of the key space.
    #[arg(long, default_value_t = 10_000)]
    pub keys: u64,

    /// Key size in bytes (at least 8).
    #[arg(long, default_value_t = 16)]
    pub key_size: usize,

    /// Value size in bytes.
    #[arg(long, default_value_t = 256)]
    pub value_size: usize,

    /// How long to measure (after the warm-up).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,

    /// Stop after this many measured operations instead of after --duration.
    #[arg(long)]
    pub ops: Option<u64>,

    /// Load applied before measuring starts.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Endpoints to send requests to (host:port, comma-separated).
    #[arg(
        long,
        env = "RAFTKV_ENDPOINTS",
        default_value = "127.0.0.1:7001",
        value_delimiter = ','
    )]
    pub endpoints: Vec<String>,

    /// Send every request to the leader only (raftkv: found through Cluster/Status).
    #[arg(long)]
    pub leader_only: bool,

    /// The system under test.
    #[arg(long, value_enum, default_value = "raftkv")]
    pub target: TargetKind,

    /// Skip writing every key once before read workloads.
    #[arg(long)]
    pub no_prepopulate: bool,

    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    /// Watch streams the watch workload opens.
    #[arg(long, default_value_t = 1000)]
    pub watchers: usize,

    /// How long the watch workload keeps its streams open and idle before writing.
    #[arg(long, default_value = "0s", value_parser = parse_duration)]
    pub hold: Duration,

    /// Send an idempotency key with every write (raftkv only), to measure what exactly-once
    /// writes cost.
    #[arg(long)]
    pub idempotency: bool,

    /// TLS to raftkv nodes (`--cacert`, `--cert`, `--key`, as for every client command).
    #[command(flatten)]
    pub tls: crate::cli::TlsOpts,

    /// The bearer token for nodes started with --auth-token-file (`--token-file`, `--token`).
    #[command(flatten)]
    pub token: crate::cli::TokenOpts,
}

impl BenchArgs {
    fn validate(&self) -> Result<(), String> {
        if self.clients == 0 || self.connections == 0 {
            return Err("--clients and --connections must be at least 1".into());
        }
        if self.keys == 0 {
            return Err("--keys must be at least 1".into());
        }
        if self.key_size < 8 {
            return Err("--key-size must be at least 8 (keys are numbered)".into());
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return Err("--read-ratio must be between 0 and 1".into());
        }
        if self.batch_size == 0 || self.scan_limit == 0 {
            return Err("--batch-size and --scan-limit must be at least 1".into());
        }
        if self.endpoints.iter().all(|e| e.trim().is_empty()) {
            return Err("--endpoints is empty".into());
        }
        if self.idempotency && self.target != TargetKind::Raftkv {
            return Err("--idempotency applies to --target raftkv only".into());
        }
        Ok(())
    }

    /// The key with number `n`, zero-padded to `--key-size`.
    fn key(&self, n: u64) -> String {
        format!("k{:0width$}", n, width = self.key_size - 1)
    }
}

/// A tiny deterministic PRNG (SplitMix64): enough to spread keys, no dependency needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

/// What one client task measured.
struct Tally {
    latency_us: Histogram<u64>,
    errors: BTreeMap<String, u64>,
}

fn new_histogram() -> Histogram<u64> {
    // 1 µs to 60 s at 3 significant figures; a value outside is clamped by `saturating_record`.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant histogram bounds are valid")
}

pub async fn run(args: BenchArgs) -> Result<(), CliError> {
    args.validate().map_err(|e| CliError::new(exit::USAGE, e))?;
    if args.workload == Workload::Watch {
        return watch::run(args).await;
    }
    let endpoints = target::resolve_endpoints(&args).await?;
    let connections = target::connect(&args, &endpoints).await?;
    let value = Arc::new(vec![b'v'; args.value_size]);

    let reads = matches!(
        args.workload,
        Workload::Get | Workload::Mixed | Workload::Scan
    );
    if reads && !args.no_prepopulate {
        target::prepopulate(&args, &connections[0], &value).await?;
    }

    let started = Instant::now();
    let measure_from = started + args.warmup;
    let stop = Arc::new(AtomicBool::new(false));
    let measured_ops = Arc::new(AtomicU64::new(0));
    let progress = report::progress_bar(&args);

    let mut tasks = Vec::with_capacity(args.clients);
    for client in 0..args.clients {
        let connection = connections[client % connections.len()].clone();
        let args = args.clone();
        let value = value.clone();
        let stop = stop.clone();
        let measured_ops = measured_ops.clone();
        tasks.push(tokio::spawn(async move {
            client_loop(
                client as u64,
                args,
                connection,
                value,
                measure_from,
                stop,
                measured_ops,
            )
            .await
        }));
    }

    let end = measure_from + args.duration;
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = Instant::now();
        let done = measured_ops.load(Ordering::Relaxed);
        report::tick(&progress, &args, started, measure_from, done);
        let finished = match args.ops {
            Some(ops) => done >= ops,
            None => now >= end,
        };
        if finished {
            break;
        }
    }
    stop.store(true, Ordering::Relaxed);
    let measured_secs = Instant::now()
        .saturating_duration_since(measure_from)
        .as_secs_f64();
    progress.finish_and_clear();

    let mut latency = new_histogram();
    let mut errors = BTreeMap::new();
    for task in tasks {
        let tally = task
            .await
            .map_err(|e| CliError::new(exit::UNAVAILABLE, format!("a client task failed: {e}")))?;
        let _ = latency.add(&tally.latency_us);
        for (code, n) in tally.errors {
            *errors.entry(code).or_default() += n;
        }
    }
    let report = Report::new(&args, &endpoints, &latency, errors, measured_secs);
    report.print(args.json);
    Ok(())
}

/// The idempotency key of one write: unique per run, client and write.
fn write_idempotency_key(run: &str, client: u64, write: u64) -> String {
    format!("{run}-{client}-{write}")
}

/// A write's idempotency key when `--idempotency` asks for one.
fn idem(args: &BenchArgs, next: &mut impl FnMut() -> String) -> Option<String> {
    args.idempotency.then(next)
}

async fn client_loop(
    client: u64,
    args: BenchArgs,
    mut connection: Connection,
    value: Arc<Vec<u8>>,
    measure_from: Instant,
    stop: Arc<AtomicBool>,
    measured_ops: Arc<AtomicU64>,
) -> Tally {
    let mut rng = Rng(0x5EED ^ client.wrapping_mul(0x1000_0001));
    // Distinct across clients and runs, so no key of this run meets one of an earlier run.
    let run = crate::cli::client::idempotency_key();
    let mut writes = 0u64;
    let mut write_key = move || {
        writes += 1;
        write_idempotency_key(&run, client, writes)
    };
    let mut tally = Tally {
        latency_us: new_histogram(),
        errors: BTreeMap::new(),
    };
    while !stop.load(Ordering::Relaxed) {
        let key = args.key(rng.below(args.keys));
        let sent = Instant::now();
        let outcome = match args.workload {
            Workload::Put => {
                connection
                    .put(&key, &value, idem(&args, &mut write_key))
                    .await
            }
            Workload::Get => connection.get(&key, args.stale).await,
            Workload::Mixed if rng.chance(args.read_ratio) => {
                connection.get(&key, args.stale).await
            }
            Workload::Mixed => {
                connection
                    .put(&key, &value, idem(&args, &mut write_key))
                    .await
            }
            Workload::Batch => {
                let keys: Vec<String> = (0..args.batch_size)
                    .map(|_| args.key(rng.below(args.keys)))
                    .collect();
                connection
                    .batch(&keys, &value, idem(&args, &mut write_key))
                    .await
            }
            Workload::Scan => connection.scan(&key, args.scan_limit, args.stale).await,
            // Run by `watch::run` before any client loop starts.
            Workload::Watch => return tally,
        };
        let done = Instant::now();
        if sent < measure_from {
            continue;
        }
        if let Some(limit) = args.ops {
            if measured_ops.fetch_add(1, Ordering::Relaxed) >= limit {
                break;
            }
        } else {
            measured_ops.fetch_add(1, Ordering::Relaxed);
        }
        match outcome {
            Ok(()) => tally
                .latency_us
                .saturating_record(done.duration_since(sent).as_micros() as u64),
            Err(code) => *tally.errors.entry(code).or_default() += 1,
        }
    }
    tally
}
