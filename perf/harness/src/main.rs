//! `loadgen`: the livetap load harness. Runs a named scenario against a hub it starts (or one it
//! is pointed at), then prints a table and writes the results as JSON.
//!
//! ```text
//! cargo build --release -p livetap -p livetap-perf
//! target/release/loadgen fanout-1k --duration 10
//! target/release/loadgen fanout-1k --peer nchan --rate 18000
//! ```
//!
//! See `perf/README.md` for the scenarios and what each number means.

mod hub;
mod naive;
mod pool;
mod producer;
mod report;
mod subscriber;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use hub::{sample, HubProcess, ProcSample};
use pool::{FilterSpec, MatchTable};
use producer::{Producer, Sent, Via};
use report::{Report, Row};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use subscriber::{Progress, Target};

/// The named workloads of issue 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// One unfiltered subscriber, the highest sustained ingest rate.
    MaxIngest,
    /// 100 unfiltered subscribers, the highest rate.
    #[value(name = "firehose-100")]
    Firehose100,
    /// 1,000 filtered plus 10 unfiltered subscribers at 100,000 events/s.
    #[value(name = "fanout-1k")]
    Fanout1k,
    /// 10,000 connected idle subscribers: hub memory per subscriber.
    #[value(name = "idle-10k")]
    Idle10k,
    /// One stalled subscriber beside 100 filtered and 10 unfiltered ones, compared with the
    /// same run without it.
    SlowConsumer,
    /// Subscribers connecting and leaving 200 times a second while ingesting.
    Churn,
}

/// Which hub serves the subscribers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Peer {
    /// livetap, started from `--hub-bin` (default: the `livetap` next to this program).
    Livetap,
    /// The linear baseline built into the harness: one broadcast channel, every subscriber
    /// checks its own filter.
    Naive,
    /// Nchan on nginx (start it with `perf/nchan/start.sh`), one channel per filter value.
    Nchan,
}

/// How events enter the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Input {
    /// NDJSON into the Unix socket.
    Socket,
    /// NDJSON over HTTP.
    Http,
    /// Stalwart webhook batches over HTTP.
    Webhook,
}

#[derive(Debug, Parser)]
#[command(about = "Load harness for livetap")]
struct Args {
    /// The workload.
    #[arg(value_enum)]
    scenario: Scenario,
    /// The hub to measure.
    #[arg(long, value_enum, default_value = "livetap")]
    peer: Peer,
    /// The livetap binary to start (default: `livetap` next to this program).
    #[arg(long)]
    hub_bin: Option<PathBuf>,
    /// Nchan address (from `perf/nchan/start.sh`).
    #[arg(long, default_value = "127.0.0.1:7090")]
    nchan: SocketAddr,
    /// Seconds of load after all subscribers are connected.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Events per second; 0 means as fast as the hub accepts (scenario default otherwise).
    #[arg(long)]
    rate: Option<u64>,
    /// Producer input path.
    #[arg(long, value_enum, default_value = "socket")]
    input: Input,
    /// Events per producer write or request.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Extra flags passed to the livetap binary (repeatable), e.g. `--hub-arg=--matcher-threads=1`.
    #[arg(long = "hub-arg", allow_hyphen_values = true)]
    hub_args: Vec<String>,
    /// Write the results here as JSON.
    #[arg(long, default_value = "perf/out/last.json")]
    json: PathBuf,
    /// Seed of templates and filters.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Milliseconds at the start of the load whose events are left out of the steady-state
    /// latency (`p99 steady`); the whole-run percentiles include them.
    #[arg(long, default_value_t = 1000)]
    warmup_ms: u64,
    /// Threads reading the subscribers' streams. One keeps the harness's share of the two
    /// cores small; more help when the harness, not the hub, is what falls behind (a `lagged`
    /// count with the hub's CPU well below the machine's). Default: 2 for `firehose-100`,
    /// whose 100 full-rate streams one reader cannot keep up with (the hub then drops tens of
    /// millions of events for it and says so, and the delivered bytes measure the harness, not
    /// the hub: `perf/RESULTS.md` §11.4), 1 for the others.
    #[arg(long)]
    reader_threads: Option<usize>,
    /// Run the harness itself on these CPUs only (a list like `1` or `0,2-3`). With
    /// `--hub-cpus`, it keeps the load generator and the hub off each other's cores, so the
    /// measured latency is the hub's and not how the kernel happened to place five busy
    /// threads on two cores (`perf/RESULTS.md` §12). Default: every CPU.
    #[arg(long, value_parser = parse_cpu_list)]
    cpus: Option<CpuList>,
    /// Run the livetap hub this harness starts on these CPUs only (see `--cpus`). Nchan is
    /// started separately: pin it with `taskset -c LIST perf/nchan/start.sh`.
    #[arg(long, value_parser = parse_cpu_list)]
    hub_cpus: Option<CpuList>,
    /// Seconds of the same load sent before any subscriber connects (livetap and the naive
    /// hub; default 0). The hub parses, logs and matches those events against no one, so the
    /// measured load meets a hub that has been running (`perf/RESULTS.md` §14.4-14.5 for
    /// what a cold start cost).
    #[arg(long, default_value_t = 0.0)]
    warm_secs: f64,
    /// Closed loop: the producer stays at most this many events ahead of the slowest
    /// unfiltered subscriber (default: open loop, the producer keeps its rate whatever the
    /// readers do). With `firehose-100` on two cores the harness's readers, not the hub, set
    /// the highest rate; open loop, a hub that accepts faster only starves them (its producer
    /// takes their CPU) and the hub drops for them, so delivered bytes fall as the hub gets
    /// faster. Closed loop measures what the hub delivers at the rate the readers can take
    /// (`perf/RESULTS.md` §13).
    #[arg(long)]
    window: Option<u64>,
}

/// A set of CPUs from the command line (a newtype, so clap takes the list as one value).
#[derive(Debug, Clone, PartialEq, Eq)]
struct CpuList(Vec<usize>);

/// Parses a CPU list such as `1`, `0,2` or `0-3`.
fn parse_cpu_list(s: &str) -> Result<CpuList, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let bad = || format!("not a CPU list: {s:?} (expected e.g. 1 or 0,2-3)");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().map_err(|_| bad())?),
        }
    }
    if cpus.is_empty() || cpus.iter().any(|&c| c >= 1024) {
        return Err(format!("not a CPU list: {s:?}"));
    }
    Ok(CpuList(cpus))
}

impl Args {
    /// The reader threads for this run (see `reader_threads`).
    fn readers(&self) -> usize {
        self.reader_threads.unwrap_or(if self.scenario == Scenario::Firehose100 { 2 } else { 1 }).max(1)
    }
}

/// A hub the harness talks to, whatever it is.
struct HubUnderTest {
    addr: SocketAddr,
    token: Option<String>,
    socket: Option<PathBuf>,
    pid: Option<u32>,
    live_path: &'static str,
    _process: Option<HubProcess>,
    _naive: Option<naive::NaiveHub>,
}

impl HubUnderTest {
    fn sample(&self) -> ProcSample {
        self.pid.map(sample).unwrap_or_default()
    }

    /// How a producer feeds this hub (livetap or the naive hub) over `input`.
    fn via(&self, input: Input) -> Via {
        match input {
            Input::Socket => Via::Socket(self.socket.clone().expect("the hub has an ingest socket")),
            Input::Http => Via::Http { addr: self.addr, token: self.token.clone().unwrap_or_default() },
            Input::Webhook => Via::Webhook { addr: self.addr, token: self.token.clone().unwrap_or_default() },
        }
    }

    fn target(&self, f: &FilterSpec, peer: Peer) -> Target {
        let path = match peer {
            Peer::Nchan => format!("/sub/{}", f.channel.as_deref().unwrap_or("all")),
            _ => format!("{}?{}", self.live_path, f.query),
        };
        Target { addr: self.addr, path, token: self.token.clone() }
    }
}

fn default_hub_bin() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    Ok(me.with_file_name("livetap"))
}

/// Raises the open-file limit to its hard maximum (10,000 subscribers need the descriptors).
fn raise_nofile() {
    // SAFETY: getrlimit/setrlimit only read and write the struct passed by pointer.
    unsafe {
        let mut r = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) == 0 {
            r.rlim_cur = r.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &r);
        }
    }
}

fn start_hub(args: &Args) -> anyhow::Result<HubUnderTest> {
    match args.peer {
        Peer::Livetap => {
            let bin = match &args.hub_bin {
                Some(b) => b.clone(),
                None => default_hub_bin()?,
            };
            let mut extra =
                vec!["--ring-capacity".into(), "262144".into(), "--subscriber-queue".into(), "65536".into()];
            if args.scenario == Scenario::Idle10k {
                extra = vec![];
            }
            extra.extend(args.hub_args.iter().cloned());
            let p = HubProcess::start(&bin, &extra, args.hub_cpus.as_ref().map(|c| c.0.as_slice()))?;
            Ok(HubUnderTest {
                addr: p.addr,
                token: Some(p.token.clone()),
                socket: p.socket.clone(),
                pid: Some(p.pid()),
                live_path: "/api/telemetry/traces/live",
                _process: Some(p),
                _naive: None,
            })
        }
        Peer::Naive => {
            let n = naive::NaiveHub::start()?;
            Ok(HubUnderTest {
                addr: n.addr,
                token: None,
                socket: Some(n.socket.clone()),
                pid: Some(n.pid),
                live_path: "/live",
                _process: None,
                _naive: Some(n),
            })
        }
        Peer::Nchan => {
            if std::net::TcpStream::connect(args.nchan).is_err() {
                bail!("Nchan is not listening on {}; start it with perf/nchan/start.sh", args.nchan);
            }
            let pid = std::fs::read_to_string("perf/out/nchan/nginx.pid")
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .map(nginx_worker_pid);
            Ok(HubUnderTest {
                addr: args.nchan,
                token: None,
                socket: None,
                pid,
                live_path: "",
                _process: None,
                _naive: None,
            })
        }
    }
}

/// Nchan's work happens in the nginx worker, the child of the master whose pid file we read.
fn nginx_worker_pid(master: u32) -> u32 {
    let children =
        std::fs::read_to_string(format!("/proc/{master}/task/{master}/children")).unwrap_or_default();
    children.split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or(master)
}

/// The subscribers of a scenario: (filtered, unfiltered).
fn shape(s: Scenario) -> (usize, usize) {
    match s {
        Scenario::MaxIngest => (0, 1),
        Scenario::Firehose100 => (0, 100),
        Scenario::Fanout1k => (1000, 10),
        Scenario::Idle10k => (10_000, 0),
        Scenario::SlowConsumer | Scenario::Churn => (100, 10),
    }
}

fn default_rate(s: Scenario) -> Option<u64> {
    match s {
        Scenario::MaxIngest | Scenario::Firehose100 => None,
        Scenario::Fanout1k => Some(100_000),
        Scenario::Idle10k => Some(0),
        Scenario::SlowConsumer | Scenario::Churn => Some(50_000),
    }
}

/// Turns transparent huge pages off for the harness. It links livetap and so allocates with
/// mimalloc, which asks for huge pages; with the common `defrag = madvise` setting a fault on a
/// fresh huge page can stall the faulting thread for milliseconds while memory is compacted
/// and cleared. livetap turns them off for itself for that reason (README, "Huge pages"). In
/// the harness such a stall is a reader that falls behind, which the run reports as hub
/// latency (`perf/RESULTS.md` §11.2).
fn disable_huge_pages() {
    // SAFETY: `prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0)` only sets a flag on this process.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) };
}

fn main() -> anyhow::Result<()> {
    disable_huge_pages();
    let args = Args::parse();
    raise_nofile();
    if let Some(cpus) = &args.cpus {
        // Before the runtime starts, so every thread of the harness inherits it.
        hub::pin_to_cpus(&cpus.0).context("--cpus")?;
    }
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.readers()).enable_all().build()?;
    let report = match args.scenario {
        Scenario::Idle10k => rt.block_on(idle(&args))?,
        Scenario::SlowConsumer => {
            let base = rt.block_on(load(&args, LoadOpts::default()))?;
            let slow = rt.block_on(load(&args, LoadOpts { stalled: 1, ..LoadOpts::default() }))?;
            Report::compare("slow-consumer", base, slow)
        }
        Scenario::Churn => {
            rt.block_on(load(&args, LoadOpts { churn_per_sec: 200, ..LoadOpts::default() }))?
        }
        _ => rt.block_on(load(&args, LoadOpts::default()))?,
    };
    report.print();
    if let Some(dir) = args.json.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.json, serde_json::to_vec_pretty(&report)?)
        .with_context(|| format!("writing {}", args.json.display()))?;
    eprintln!("results written to {}", args.json.display());
    Ok(())
}

#[derive(Debug, Clone, Copy, Default)]
struct LoadOpts {
    /// Subscribers that connect and never read.
    stalled: usize,
    /// Short-lived subscribers started per second.
    churn_per_sec: u64,
}

/// A load run: connect the subscribers, produce for `duration`, wait for delivery, account.
async fn load(args: &Args, opts: LoadOpts) -> anyhow::Result<Report> {
    let (filtered, unfiltered) = shape(args.scenario);
    let rate = match args.rate.or(default_rate(args.scenario)) {
        Some(0) | None => None,
        r => r,
    };
    let templates = Arc::new(pool::templates(4096, args.seed));
    let mut filters = pool::filter_mix(filtered, args.seed);
    filters.extend((0..unfiltered).map(|_| pool::firehose()));
    let table = pool::match_table(&templates, &filters)?;
    let hub = start_hub(args)?;
    let epoch = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    if args.warm_secs > 0.0 && args.peer != Peer::Nchan {
        warm_up(args, &hub, rate, &templates, epoch)?;
    }

    eprintln!("connecting {} subscribers to {:?} at {}", filters.len(), args.peer, hub.addr);
    let mut tasks = Vec::new();
    let mut progress = Vec::new();
    let latencies = subscriber::Latencies::new();
    for f in &filters {
        let p = Arc::new(Progress::default());
        progress.push(p.clone());
        let target = hub.target(f, args.peer);
        // Connected (200 received) before any event is sent, so every subscriber's expected set
        // is the whole run: livetap answers only once its matcher indexes include the
        // subscriber.
        let conn = subscriber::connect(&target).await?;
        let stop = stop.clone();
        tasks.push(tokio::spawn(subscriber::run(conn, p, epoch, stop, latencies.clone())));
    }
    // Held open, never read: the hub must notice and not let it slow anyone else.
    let mut stalled = Vec::new();
    for _ in 0..opts.stalled {
        let t = hub.target(&pool::firehose(), args.peer);
        stalled.push(subscriber::connect(&t).await?);
    }
    // livetap answers 200 only once its indexes include the subscriber; Nchan and the naive
    // hub register on their own schedule, so give them a moment before producing.
    if args.peer != Peer::Livetap {
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    let churn = (opts.churn_per_sec > 0).then(|| {
        let filters = pool::filter_mix(256, args.seed + 1);
        let targets: Vec<Target> = filters.iter().map(|f| hub.target(f, args.peer)).collect();
        tokio::spawn(churn_task(targets, opts.churn_per_sec, stop.clone()))
    });

    let before = hub.sample();
    let load_from_ns = epoch.elapsed().as_nanos() as u64;
    let sent = Arc::new(Sent::default());
    let stop_producers = Arc::new(AtomicBool::new(false));
    let channels = Arc::new(nchan_channels(&table, &filters));
    // Closed-loop pacing: a thread keeps the slowest unfiltered subscriber's count (received
    // plus reported lagged) where the producer can see it.
    let slowest = Arc::new(AtomicU64::new(0));
    let firehoses: Vec<Arc<Progress>> =
        filters.iter().zip(&progress).filter(|(f, _)| f.channel.is_none()).map(|(_, p)| p.clone()).collect();
    let window = args.window.filter(|_| !firehoses.is_empty()).map(|w| (slowest.clone(), w));
    if window.is_some() {
        let (slowest, stop) = (slowest.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let min = firehoses
                    .iter()
                    .map(|p| p.received.load(Ordering::Relaxed) + p.lagged.load(Ordering::Relaxed))
                    .min()
                    .unwrap_or(0);
                slowest.store(min, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(1));
            }
        });
    }
    // One producer: event numbers must be one increasing sequence for order checking.
    let producers: Vec<_> = (0..1)
        .map(|_| {
            let via = match args.peer {
                Peer::Nchan => Via::Nchan { addr: hub.addr, channels: channels.clone() },
                _ => hub.via(args.input),
            };
            let p = Producer {
                via,
                rate,
                batch: if args.peer == Peer::Nchan { 1 } else { args.batch },
                templates: templates.clone(),
                window: window.clone(),
            };
            let (sent, stop) = (sent.clone(), stop_producers.clone());
            std::thread::spawn(move || p.run(epoch, sent, stop))
        })
        .collect();

    let started = Instant::now();
    latencies.steady_from_ns.store(
        (epoch.elapsed() + Duration::from_millis(args.warmup_ms)).as_nanos() as u64,
        Ordering::Relaxed,
    );
    let mut last = (0u64, 0u64);
    // Nchan's worker outlives runs, so its VmHWM may come from an earlier run: for it, the
    // peak is the largest RSS sampled during this run.
    let mut sampled_peak = before.rss;
    while started.elapsed() < Duration::from_secs(args.duration) {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let s = sent.accepted.load(Ordering::Relaxed);
        let r: u64 = progress.iter().map(|p| p.received.load(Ordering::Relaxed)).sum();
        let now = hub.sample();
        sampled_peak = sampled_peak.max(now.rss);
        let cpu = now.cpu_secs - before.cpu_secs;
        eprintln!(
            "  t={:>3}s  ingest {:>9}/s  deliveries {:>10}/s  hub cpu {:.1}s",
            started.elapsed().as_secs(),
            s - last.0,
            r - last.1,
            cpu
        );
        last = (s, r);
    }
    let produce_secs = started.elapsed().as_secs_f64();
    stop_producers.store(true, Ordering::SeqCst);
    for p in producers {
        p.join().map_err(|_| anyhow::anyhow!("producer panicked"))??;
    }
    let total = sent.accepted.load(Ordering::Relaxed);
    let after_produce = hub.sample();
    // Subscribers keep reading until they have what they should, or nothing moves for 3 s.
    let expect: Vec<u64> = (0..filters.len())
        .map(|f| if filters[f].channel.is_none() { total } else { pool::expected(&table, f, total) })
        .collect();
    drain(&progress, &expect).await;
    stop.store(true, Ordering::SeqCst);
    let mut errors = Vec::new();
    for t in tasks {
        let o = t.await?;
        if let Some(e) = o.error {
            errors.push(e);
        }
    }
    if let Some(c) = churn {
        c.abort();
    }
    drop(stalled);
    let end = hub.sample();

    let mut row = Row::new(scenario_name(args.scenario), format!("{:?}", args.peer).to_lowercase());
    row.subscribers = filters.len() + opts.stalled;
    row.events = total;
    row.ingest_rate = total as f64 / produce_secs;
    row.target_rate = rate;
    for (f, p) in progress.iter().enumerate() {
        let got = p.received.load(Ordering::Relaxed);
        let lag = p.lagged.load(Ordering::Relaxed);
        row.delivered += got;
        row.lagged += lag;
        row.out_of_order += p.out_of_order.load(Ordering::Relaxed);
        row.bytes += p.bytes.load(Ordering::Relaxed);
        let want = expect[f];
        row.expected += want;
        if got + lag < want {
            row.lost += want - got - lag;
        }
        if got > want {
            row.extra += got - want;
        }
    }
    row.deliveries_per_sec = row.delivered as f64 / produce_secs;
    row.bytes_per_sec = row.bytes as f64 / produce_secs;
    row.set_latency(
        &latencies.all.lock().expect("every subscriber has ended"),
        &latencies.steady.lock().expect("every subscriber has ended"),
    );
    row.set_timeline(&latencies.timeline.lock().expect("every subscriber has ended"), load_from_ns);
    row.warmup_secs = args.warmup_ms as f64 / 1000.0;
    row.reader_threads = args.readers();
    row.hub_cpu_secs = after_produce.cpu_secs - before.cpu_secs;
    row.hub_cpu_secs_total = end.cpu_secs - before.cpu_secs;
    row.hub_peak_rss = if args.peer == Peer::Nchan { sampled_peak.max(end.rss) } else { end.peak_rss };
    row.duration_secs = produce_secs;
    row.errors = errors.into_iter().take(5).collect();
    if let (Some(token), Peer::Livetap) = (&hub.token, args.peer) {
        row.hub_stats = hub_stats(hub.addr, token).ok();
    }
    Ok(Report::single(row))
}

/// Sends `--warm-secs` of the load to a hub nobody subscribes to yet (see `Args::warm_secs`).
fn warm_up(
    args: &Args,
    hub: &HubUnderTest,
    rate: Option<u64>,
    templates: &Arc<Vec<pool::Template>>,
    epoch: Instant,
) -> anyhow::Result<()> {
    let p = Producer {
        via: hub.via(args.input),
        rate,
        batch: args.batch,
        templates: templates.clone(),
        window: None,
    };
    let (sent, stop) = (Arc::new(Sent::default()), Arc::new(AtomicBool::new(false)));
    let (s2, st2) = (sent.clone(), stop.clone());
    let t = std::thread::spawn(move || p.run(epoch, s2, st2));
    std::thread::sleep(Duration::from_secs_f64(args.warm_secs));
    stop.store(true, Ordering::SeqCst);
    t.join().map_err(|_| anyhow::anyhow!("warm-up producer panicked"))??;
    eprintln!("warm-up: {} events sent before any subscriber", sent.accepted.load(Ordering::Relaxed));
    // Let the hub finish them before the subscribers arrive.
    std::thread::sleep(Duration::from_millis(300));
    Ok(())
}

/// For the Nchan peer: per template, the channels to publish to (every filter it matches and
/// `all` when there are unfiltered subscribers), comma-separated.
fn nchan_channels(table: &MatchTable, filters: &[FilterSpec]) -> Vec<String> {
    let any_firehose = filters.iter().any(|f| f.channel.is_none());
    table
        .per_template
        .iter()
        .map(|fs| {
            let mut chans: Vec<&str> = fs.iter().filter_map(|&f| filters[f].channel.as_deref()).collect();
            chans.sort_unstable();
            chans.dedup();
            if any_firehose {
                chans.push("all");
            }
            chans.join(",")
        })
        .collect()
}

async fn drain(progress: &[Arc<Progress>], expect: &[u64]) {
    let mut last_total = u64::MAX;
    let mut still = Instant::now();
    loop {
        let total: u64 = progress.iter().map(|p| p.received.load(Ordering::Relaxed)).sum();
        let done = progress.iter().zip(expect).all(|(p, &e)| {
            p.received.load(Ordering::Relaxed) + p.lagged.load(Ordering::Relaxed) >= e
                || p.ended.load(Ordering::Relaxed)
        });
        if done {
            return;
        }
        if total != last_total {
            last_total = total;
            still = Instant::now();
        } else if still.elapsed() > Duration::from_secs(3) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn churn_task(targets: Vec<Target>, per_sec: u64, stop: Arc<AtomicBool>) {
    let gap = Duration::from_nanos(1_000_000_000 / per_sec.max(1));
    let mut i = 0usize;
    let mut tick = tokio::time::interval(gap);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let t = targets[i % targets.len()].clone();
        i += 1;
        // Each churned subscriber lives for about half a second, so about a hundred are
        // connected at any time while two hundred come and go every second.
        tokio::spawn(async move {
            if let Ok(conn) = subscriber::connect(&t).await {
                tokio::time::sleep(Duration::from_millis(500)).await;
                drop(conn);
            }
        });
    }
}

/// `idle-10k`: memory of the hub before and after connecting idle subscribers.
async fn idle(args: &Args) -> anyhow::Result<Report> {
    let (filtered, _) = shape(args.scenario);
    let hub = start_hub(args)?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = hub.sample();
    let filters = pool::filter_mix(filtered, args.seed);
    let mut conns = Vec::with_capacity(filters.len());
    for (i, f) in filters.iter().enumerate() {
        conns.push(
            subscriber::connect(&hub.target(f, args.peer))
                .await
                .with_context(|| format!("subscriber {i}"))?,
        );
        if i % 1000 == 999 {
            eprintln!("  {} connected, hub rss {} KiB", i + 1, hub.sample().rss / 1024);
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = hub.sample();
    let mut row = Row::new("idle-10k", format!("{:?}", args.peer).to_lowercase());
    row.subscribers = conns.len();
    row.hub_rss_before = before.rss;
    row.hub_rss_after = after.rss;
    row.bytes_per_subscriber = (after.rss.saturating_sub(before.rss)) as f64 / conns.len().max(1) as f64;
    row.hub_peak_rss = after.peak_rss;
    if let (Some(token), Peer::Livetap) = (&hub.token, args.peer) {
        row.hub_stats = hub_stats(hub.addr, token).ok();
    }
    Ok(Report::single(row))
}

fn scenario_name(s: Scenario) -> &'static str {
    match s {
        Scenario::MaxIngest => "max-ingest",
        Scenario::Firehose100 => "firehose-100",
        Scenario::Fanout1k => "fanout-1k",
        Scenario::Idle10k => "idle-10k",
        Scenario::SlowConsumer => "slow-consumer",
        Scenario::Churn => "churn",
    }
}

/// livetap's own counters at the end of a run (index, drops, rebuilds), without the
/// per-subscriber detail.
fn hub_stats(addr: SocketAddr, token: &str) -> anyhow::Result<serde_json::Value> {
    let mut c = producer::Http::connect(addr)?;
    let (status, body) = c.request("GET", "/api/livetap/stats", Some(token), "text/plain", b"")?;
    if status != 200 {
        bail!("stats answered {status}");
    }
    let mut v: serde_json::Value = serde_json::from_slice(&body)?;
    if let Some(o) = v.as_object_mut() {
        o.remove("subscriber_detail");
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::{parse_cpu_list, CpuList};

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("1"), Ok(CpuList(vec![1])));
        assert_eq!(parse_cpu_list("0,2-4"), Ok(CpuList(vec![0, 2, 3, 4])));
        for bad in ["", "x", "3-1", "1-", "-1", "5000"] {
            assert!(parse_cpu_list(bad).is_err(), "{bad}");
        }
    }
}
