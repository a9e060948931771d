//! The load generator of the load tests (see `load-tests/README.md`).
//!
//! It shares a core with the echo backend, so it is a deliberately lean
//! WebSocket client: the upgrade request is written by hand, the frames it
//! sends are built once (one masking key per connection — fine for a load
//! generator, not for a browser), and replies are only counted, never
//! copied. Every mode is bounded in connections and seconds.
//!
//! Each mode prints one human-readable line and one `result mode=… key=value`
//! line for scripts.
//!
//! ```sh
//! loadgen throughput --url ws://127.0.0.1:8080/ --conns 64 --window 16 --size 1024 --secs 8
//! loadgen latency    --url ws://127.0.0.1:8080/ --secs 5
//! loadgen idle       --url ws://127.0.0.1:8080/ --conns 9000 --rss-pid 1234 --hold-secs 0
//! loadgen handshakes --url ws://127.0.0.1:8080/ --workers 32 --secs 5
//! ```

// A load generator measures wall-clock time on real sockets; tokio's
// paused clock (the reason for the house rule) has no place here.
#![allow(clippy::disallowed_types)]

use std::{
    io::{self, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, Interest},
    net::{TcpSocket, TcpStream},
};

/// Load generator for framegate and the proxies it is compared with.
#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    mode: Mode,
}

#[derive(Subcommand)]
enum Mode {
    /// N connections, each keeping W binary messages of S bytes in flight.
    Throughput(ThroughputArgs),
    /// One connection, one small message at a time: round-trip percentiles.
    Latency(LatencyArgs),
    /// Open N connections, hold them, report the proxy's RSS per connection.
    Idle(IdleArgs),
    /// C workers doing connect + upgrade + close in a loop.
    Handshakes(HandshakeArgs),
}

#[derive(Args)]
struct Target {
    /// `ws://IP:PORT/PATH` of the proxy (or backend) under test.
    #[arg(long)]
    url: String,
    /// Connect from this many source addresses, 127.0.0.2 upwards (0: let
    /// the kernel pick), so many connections don't run out of ports.
    #[arg(long, default_value_t = 0)]
    sources: u8,
    /// An extra header for the upgrade request, `Name: value` (repeatable):
    /// e.g. the bearer token of a gateway that checks one.
    #[arg(long = "header")]
    headers: Vec<String>,
}

#[derive(Args)]
struct Timing {
    /// Measured seconds.
    #[arg(long, default_value_t = 8.0)]
    secs: f64,
    /// Seconds run before measuring (not counted).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Processes whose CPU time (utime + stime) over the measured seconds is
    /// reported per unit of work: the proxy's.
    #[arg(long, value_delimiter = ',')]
    cpu_pid: Vec<u32>,
}

#[derive(Args)]
struct ThroughputArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    timing: Timing,
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// Messages in flight per connection.
    #[arg(long, default_value_t = 16)]
    window: usize,
    /// Payload bytes per message.
    #[arg(long, default_value_t = 64)]
    size: usize,
}

#[derive(Args)]
struct LatencyArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    timing: Timing,
    #[arg(long, default_value_t = 32)]
    size: usize,
}

#[derive(Args)]
struct IdleArgs {
    #[command(flatten)]
    target: Target,
    #[arg(long, default_value_t = 9000)]
    conns: usize,
    /// Connections opened before the baseline RSS sample, so one-time
    /// allocations (thread buffers, pools) are not charged per connection.
    #[arg(long, default_value_t = 200)]
    warm: usize,
    /// Upgrades in progress at once while opening.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Processes whose VmRSS is summed: the proxy's.
    #[arg(long, value_delimiter = ',')]
    rss_pid: Vec<u32>,
    /// Written (with the result line) once every connection is open.
    #[arg(long)]
    ready_file: Option<PathBuf>,
    /// Seconds to hold the connections once open; SIGTERM, SIGINT or
    /// SIGUSR1 ends the hold early.
    #[arg(long, default_value_t = 0.0)]
    hold_secs: f64,
    /// Give up if opening takes longer than this.
    #[arg(long, default_value_t = 120.0)]
    open_timeout: f64,
}

#[derive(Args)]
struct HandshakeArgs {
    #[command(flatten)]
    target: Target,
    #[command(flatten)]
    timing: Timing,
    #[arg(long, default_value_t = 32)]
    workers: usize,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // One thread: the generator is pinned to a core it shares with the backend.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        match cli.mode {
            Mode::Throughput(a) => throughput(a).await,
            Mode::Latency(a) => latency(a).await,
            Mode::Idle(a) => idle(a).await,
            Mode::Handshakes(a) => handshakes(a).await,
        }
    })
}

// === Connections ===

/// Where to connect and what to put in the request line.
#[derive(Clone)]
struct Url {
    addr: SocketAddr,
    authority: String,
    path: String,
    sources: u8,
    /// Extra header lines, each ending in CRLF.
    headers: String,
}

impl Url {
    fn parse(t: &Target) -> anyhow::Result<Url> {
        let rest = t
            .url
            .strip_prefix("ws://")
            .context("the URL must start with ws://")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let addr = authority
            .parse()
            .with_context(|| format!("`{authority}` is not IP:PORT"))?;
        Ok(Url {
            addr,
            authority: authority.to_owned(),
            path: path.to_owned(),
            sources: t.sources,
            headers: t.headers.iter().map(|h| format!("{h}\r\n")).collect(),
        })
    }

    /// The `n`th source address, round-robin over the configured ones.
    fn source(&self, n: usize) -> Option<IpAddr> {
        (self.sources > 0).then(|| {
            IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                2 + (n % self.sources as usize) as u8,
            ))
        })
    }
}

/// Connects and completes the WebSocket upgrade. Returns the socket and any
/// bytes read past the response head.
async fn connect(url: &Url, source: Option<IpAddr>) -> anyhow::Result<(TcpStream, Vec<u8>)> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket
            .bind(SocketAddr::new(ip, 0))
            .with_context(|| format!("binding to {ip}"))?;
    }
    let mut s = socket.connect(url.addr).await?;
    s.set_nodelay(true)?;
    let key = tungstenite::handshake::client::generate_key();
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{}\r\n",
        url.path, url.authority, url.headers
    );
    s.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    loop {
        if s.read_buf(&mut buf).await? == 0 {
            bail!("connection closed during the upgrade");
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(end + 4);
            check_response(&buf, &key)?;
            return Ok((s, rest));
        }
        if buf.len() > 16 * 1024 {
            bail!("response head over 16 KiB");
        }
    }
}

fn check_response(head: &[u8], key: &str) -> anyhow::Result<()> {
    let head = std::str::from_utf8(head).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 101") {
        bail!("upgrade refused: {status}");
    }
    let expected = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let accepted = lines
        .filter_map(|l| l.split_once(':'))
        .any(|(name, value)| {
            name.eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == expected
        });
    if !accepted {
        bail!("wrong or missing Sec-WebSocket-Accept");
    }
    Ok(())
}

const BINARY: u8 = 2;
const CLOSE: u8 = 8;

/// A whole masked client frame (FIN set) with a recognisable payload.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let key: [u8; 4] = rand::random();
    let len = payload.len();
    let mut f = vec![0x80 | opcode];
    match len {
        0..=125 => f.push(0x80 | len as u8),
        126..=0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(len as u16).to_be_bytes());
        }
        _ => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(len as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&key);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
    f
}

fn data_frame(size: usize) -> Vec<u8> {
    let payload: Vec<u8> = (0..size).map(|i| i as u8).collect();
    client_frame(BINARY, &payload)
}

/// The server sent a close frame: the test cannot go on.
#[derive(Debug)]
struct ServerClosed;

/// Counts whole messages in a stream of server frames, across reads,
/// without copying payloads.
#[derive(Default)]
struct Counter {
    /// Payload bytes of the current frame still to come.
    skip: u64,
    /// The current frame ends a data message.
    ends_message: bool,
    /// A header split across reads.
    head: [u8; 14],
    head_len: usize,
}

impl Counter {
    /// Returns how many messages were completed by `data`.
    fn feed(&mut self, data: &[u8]) -> Result<u64, ServerClosed> {
        let mut done = 0;
        let mut i = 0;
        while i < data.len() {
            if self.skip > 0 {
                let n = self.skip.min((data.len() - i) as u64);
                self.skip -= n;
                i += n as usize;
                if self.skip == 0 && self.ends_message {
                    done += 1;
                }
                continue;
            }
            let had = self.head_len;
            let take = (self.head.len() - had).min(data.len() - i);
            self.head[had..had + take].copy_from_slice(&data[i..i + take]);
            let Some((hlen, fin, opcode, len)) = parse_header(&self.head[..had + take]) else {
                self.head_len = had + take;
                i += take;
                continue;
            };
            self.head_len = 0;
            i += hlen - had;
            if opcode == CLOSE {
                return Err(ServerClosed);
            }
            self.ends_message = fin && opcode < CLOSE;
            self.skip = len;
            if len == 0 && self.ends_message {
                done += 1;
            }
        }
        Ok(done)
    }
}

/// `(header length, fin, opcode, payload length)` once the header is whole.
fn parse_header(b: &[u8]) -> Option<(usize, bool, u8, u64)> {
    let (&b0, &b1) = (b.first()?, b.get(1)?);
    let masked = b1 & 0x80 != 0;
    let (ext, len) = match b1 & 0x7f {
        126 => (2, u16::from_be_bytes(b.get(2..4)?.try_into().ok()?) as u64),
        127 => (8, u64::from_be_bytes(b.get(2..10)?.try_into().ok()?)),
        n => (0, n as u64),
    };
    let hlen = 2 + ext + if masked { 4 } else { 0 };
    (b.len() >= hlen).then_some((hlen, b0 & 0x80 != 0, b0 & 0x0f, len))
}

// === /proc ===

/// utime + stime of `pids`, in seconds.
fn cpu_seconds(pids: &[u32]) -> anyhow::Result<f64> {
    let mut ticks = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        // Fields after the command name (which may hold spaces): state is
        // field 3, utime and stime are fields 14 and 15.
        let after = &stat[stat.rfind(')').context("odd /proc stat")? + 2..];
        let fields: Vec<&str> = after.split(' ').collect();
        ticks += fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    }
    // USER_HZ is 100 on every Linux this runs on.
    Ok(ticks as f64 / 100.0)
}

/// How many times the threads of `pids` went to sleep (voluntary context
/// switches): a proxy that runs out of work waits in `epoll_wait`, and the
/// next packet for it must wake its core. Where the load generator's core
/// is the bottleneck (run.sh's handshakes), those wake-ups are paid there
/// too, so the fewer a proxy's sleeps, the higher its rate, whatever its
/// CPU per handshake (load-tests/README.md).
fn sleeps(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task"))
            .with_context(|| format!("reading /proc/{pid}/task"))?;
        for task in tasks {
            // A thread may end between the listing and the read.
            let Ok(status) = std::fs::read_to_string(task?.path().join("status")) else {
                continue;
            };
            total += status
                .lines()
                .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
                .context("no voluntary_ctxt_switches")?
                .trim()
                .parse::<u64>()?;
        }
    }
    Ok(total)
}

/// Sum of VmRSS of `pids`, in KiB.
fn rss_kib(pids: &[u32]) -> anyhow::Result<u64> {
    let mut total = 0;
    for pid in pids {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .context("no VmRSS")?;
        total += line
            .split_whitespace()
            .nth(1)
            .context("odd VmRSS")?
            .parse::<u64>()?;
    }
    Ok(total)
}

fn report(human: String, result: String) {
    println!("{human}");
    println!("result {result}");
    let _ = io::stdout().flush();
}

// === Modes ===

async fn throughput(a: ThroughputArgs) -> anyhow::Result<()> {
    let url = Url::parse(&a.target)?;
    let frame = data_frame(a.size);
    // One connection never owes more than its window plus the frame it is
    // part-way through, so W + 1 copies back to back can be written from
    // directly, at any offset, without copying (see `pump`).
    let batch: Arc<[u8]> = frame.repeat(a.window + 1).into();
    let received = Arc::new(AtomicU64::new(0));
    let mut streams = Vec::new();
    for i in 0..a.conns {
        streams.push(connect(&url, url.source(i)).await?);
    }
    let (failed_tx, mut failed) = tokio::sync::mpsc::channel(1);
    for (s, leftover) in streams {
        let (batch, received, failed_tx) = (batch.clone(), received.clone(), failed_tx.clone());
        let flen = frame.len();
        let window = a.window;
        tokio::spawn(async move {
            if let Err(e) = pump(s, &leftover, &batch, flen, window, &received).await {
                let _ = failed_tx.send(e).await;
            }
        });
    }
    let measure = async {
        tokio::time::sleep(Duration::from_secs_f64(a.timing.warmup)).await;
        let (m0, c0, t0) = (
            received.load(Ordering::Relaxed),
            cpu_seconds(&a.timing.cpu_pid)?,
            Instant::now(),
        );
        tokio::time::sleep(Duration::from_secs_f64(a.timing.secs)).await;
        let (m1, c1, took) = (
            received.load(Ordering::Relaxed),
            cpu_seconds(&a.timing.cpu_pid)?,
            t0.elapsed().as_secs_f64(),
        );
        anyhow::Ok((m1 - m0, c1 - c0, took))
    };
    let (msgs, cpu, took) = tokio::select! {
        r = measure => r?,
        Some(e) = failed.recv() => bail!("a connection failed: {e}"),
    };
    let rate = msgs as f64 / took;
    let per_million = if msgs > 0 {
        cpu * 1e6 / msgs as f64
    } else {
        0.0
    };
    report(
        format!(
            "throughput: {} conns x {} in flight, {} B: {:.0} msgs/s ({msgs} in {took:.2}s), \
             watched CPU {cpu:.2}s = {per_million:.3}s per 1M msgs",
            a.conns, a.window, a.size, rate
        ),
        format!(
            "mode=throughput conns={} window={} size={} msgs={msgs} secs={took:.3} \
             msgs_per_s={rate:.0} cpu_s={cpu:.2} cpu_s_per_1m={per_million:.3}",
            a.conns, a.window, a.size
        ),
    );
    // The connections end with the process, mid-flight: the numbers are in.
    std::process::exit(0);
}

/// Keeps `window` messages in flight on one connection until the process
/// ends. Reads and writes are driven from one readiness loop, so a large
/// batch being written never stops the replies from being read.
async fn pump(
    s: TcpStream,
    leftover: &[u8],
    batch: &[u8],
    flen: usize,
    window: usize,
    received: &AtomicU64,
) -> anyhow::Result<()> {
    let mut counter = Counter::default();
    let mut buf = vec![0u8; 256 * 1024];
    // `batch[wpos..wend]` is owed to the socket. It repeats with period
    // `flen`, so after a write only `wpos % flen` matters.
    let (mut wpos, mut wend) = (0, window * flen);
    let mut credit = |data: &[u8], wend: &mut usize| -> anyhow::Result<()> {
        let done = counter
            .feed(data)
            .map_err(|_| anyhow::anyhow!("the server sent a close frame"))?;
        received.fetch_add(done, Ordering::Relaxed);
        *wend += done as usize * flen;
        Ok(())
    };
    credit(leftover, &mut wend)?;
    loop {
        let interest = if wpos < wend {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        let ready = s.ready(interest).await?;
        if ready.is_readable() {
            match s.try_read(&mut buf) {
                Ok(0) => bail!("the server closed the connection"),
                Ok(n) => credit(&buf[..n], &mut wend)?,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        if wpos < wend {
            match s.try_write(&batch[wpos..wend]) {
                Ok(n) => {
                    wpos += n;
                    let whole = wpos - wpos % flen;
                    wpos -= whole;
                    wend -= whole;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// A round trip (or the upgrade) that takes longer means the target is stuck.
const ROUND_TRIP_LIMIT: Duration = Duration::from_secs(5);

/// A histogram of durations in nanoseconds, 1 ns to 60 s, to 3 digits.
fn nanos() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::new_with_bounds(1, 60_000_000_000, 3)?)
}

async fn latency(a: LatencyArgs) -> anyhow::Result<()> {
    let url = Url::parse(&a.target)?;
    let frame = data_frame(a.size);
    let (mut s, leftover) = tokio::time::timeout(ROUND_TRIP_LIMIT, connect(&url, url.source(0)))
        .await
        .context("the upgrade took longer than 5 s")??;
    if !leftover.is_empty() {
        bail!("the server sent data before any message");
    }
    let mut counter = Counter::default();
    let mut buf = vec![0u8; 64 * 1024];
    let mut hist = nanos()?;
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(a.timing.warmup);
    let end = measure_from + Duration::from_secs_f64(a.timing.secs);
    loop {
        let sent = Instant::now();
        if sent >= end {
            break;
        }
        s.write_all(&frame).await?;
        loop {
            let n = tokio::time::timeout(ROUND_TRIP_LIMIT, s.read(&mut buf))
                .await
                .context("no echo within 5 s")??;
            if n == 0 {
                bail!("the server closed the connection");
            }
            if counter
                .feed(&buf[..n])
                .map_err(|_| anyhow::anyhow!("the server sent a close frame"))?
                > 0
            {
                break;
            }
        }
        if sent >= measure_from {
            hist.record(sent.elapsed().as_nanos() as u64)?;
        }
    }
    let us = |q: f64| hist.value_at_quantile(q) as f64 / 1000.0;
    report(
        format!(
            "latency: {} round trips of {} B: p50 {:.1} µs, p90 {:.1} µs, p99 {:.1} µs, \
             p99.9 {:.1} µs, max {:.1} µs",
            hist.len(),
            a.size,
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999),
            hist.max() as f64 / 1000.0
        ),
        format!(
            "mode=latency size={} count={} p50_us={:.1} p90_us={:.1} p99_us={:.1} p999_us={:.1}",
            a.size,
            hist.len(),
            us(0.5),
            us(0.9),
            us(0.99),
            us(0.999)
        ),
    );
    Ok(())
}

async fn idle(a: IdleArgs) -> anyhow::Result<()> {
    let url = Url::parse(&a.target)?;
    if a.warm >= a.conns {
        bail!("--warm must be below --conns");
    }
    let deadline = Instant::now() + Duration::from_secs_f64(a.open_timeout);
    let mut held = open_many(&url, 0..a.warm, a.concurrency, deadline).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(&a.rss_pid)?;
    held.extend(open_many(&url, a.warm..a.conns, a.concurrency, deadline).await?);
    // Let the proxy finish whatever it does after the last upgrade.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(&a.rss_pid)?;
    let measured = a.conns - a.warm;
    let per_conn = after.saturating_sub(before) as f64 / measured as f64;
    let result = format!(
        "mode=idle conns={} rss_before_kib={before} rss_after_kib={after} kib_per_conn={per_conn:.2}",
        held.len()
    );
    report(
        format!(
            "idle: {} connections open; watched RSS {before} KiB -> {after} KiB: \
             {per_conn:.2} KiB per connection (over the last {measured})",
            held.len()
        ),
        result.clone(),
    );
    if let Some(path) = &a.ready_file {
        std::fs::write(path, format!("result {result}\n"))?;
    }
    let hold = tokio::time::sleep(Duration::from_secs_f64(a.hold_secs));
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut usr1 = signal(SignalKind::user_defined1())?;
    tokio::select! {
        _ = hold => {}
        _ = term.recv() => {}
        _ = int.recv() => {}
        _ = usr1.recv() => {}
    }
    drop(held);
    Ok(())
}

/// Opens connections `range` with `concurrency` upgrades in progress at once.
async fn open_many(
    url: &Url,
    range: std::ops::Range<usize>,
    concurrency: usize,
    deadline: Instant,
) -> anyhow::Result<Vec<TcpStream>> {
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..concurrency.max(1) {
        let url = url.clone();
        let ids: Vec<usize> = range.clone().skip(w).step_by(concurrency.max(1)).collect();
        tasks.spawn(async move {
            let mut mine = Vec::with_capacity(ids.len());
            for i in ids {
                let left = deadline.saturating_duration_since(Instant::now());
                let (s, _) = tokio::time::timeout(left, connect(&url, url.source(i)))
                    .await
                    .context("opening took longer than --open-timeout")?
                    .with_context(|| format!("connection {i}"))?;
                mine.push(s);
            }
            anyhow::Ok(mine)
        });
    }
    let mut all = Vec::with_capacity(range.len());
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    Ok(all)
}

async fn handshakes(a: HandshakeArgs) -> anyhow::Result<()> {
    let url = Url::parse(&a.target)?;
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let close = client_frame(CLOSE, &1000u16.to_be_bytes());
    let start = Instant::now();
    let measure_from = start + Duration::from_secs_f64(a.timing.warmup);
    let end = measure_from + Duration::from_secs_f64(a.timing.secs);
    // Each worker keeps its own histogram of the upgrades it started in the
    // measured seconds (connect to a checked 101), merged when all are done:
    // nothing is shared per session on the core the generator is bound by.
    let workers: Vec<_> = (0..a.workers)
        .map(|w| {
            let (url, done, errors, close) =
                (url.clone(), done.clone(), errors.clone(), close.clone());
            tokio::spawn(async move {
                let mut upgrades = nanos()?;
                let mut n = w;
                loop {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    match one_session(&url, url.source(n), &close).await {
                        Ok(upgraded) => {
                            done.fetch_add(1, Ordering::Relaxed);
                            if began >= measure_from {
                                upgrades.record(upgraded.as_nanos() as u64)?;
                            }
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    n += a.workers;
                }
                anyhow::Ok(upgrades)
            })
        })
        .collect();
    tokio::time::sleep_until(measure_from.into()).await;
    let (d0, e0, c0, s0, t0) = (
        done.load(Ordering::Relaxed),
        errors.load(Ordering::Relaxed),
        cpu_seconds(&a.timing.cpu_pid)?,
        sleeps(&a.timing.cpu_pid)?,
        Instant::now(),
    );
    tokio::time::sleep_until(end.into()).await;
    let (count, errs, cpu, slept) = (
        done.load(Ordering::Relaxed) - d0,
        errors.load(Ordering::Relaxed) - e0,
        cpu_seconds(&a.timing.cpu_pid)? - c0,
        sleeps(&a.timing.cpu_pid)?.saturating_sub(s0),
    );
    let rate = count as f64 / t0.elapsed().as_secs_f64();
    let mut upgrades = nanos()?;
    for w in workers {
        upgrades.add(w.await??)?;
    }
    let us = |q: f64| upgrades.value_at_quantile(q) as f64 / 1000.0;
    let each = |v: f64| if count > 0 { v / count as f64 } else { 0.0 };
    let (us_each, sleeps_each) = (each(cpu * 1e6), each(slept as f64));
    report(
        format!(
            "handshakes: {} workers: {rate:.0} sessions/s (connect + upgrade + close), \
             {errs} errors, watched CPU {cpu:.2}s = {us_each:.1} µs per session, \
             {sleeps_each:.2} sleeps per session; connect to 101 p50 {:.1} µs, p99 {:.1} µs",
            a.workers,
            us(0.5),
            us(0.99)
        ),
        format!(
            "mode=handshakes workers={} count={count} errors={errs} per_s={rate:.0} \
             cpu_s={cpu:.2} cpu_us_each={us_each:.1} sleeps_each={sleeps_each:.3} \
             upgrade_p50_us={:.1} upgrade_p99_us={:.1}",
            a.workers,
            us(0.5),
            us(0.99)
        ),
    );
    std::process::exit(0);
}

/// One whole session: connect, upgrade, send a close frame, and read until
/// the server closes TCP (servers close first, so the TIME_WAIT state stays
/// on their side, not on the generator's ports). Returns how long the
/// upgrade took, from before the connect to the checked 101.
async fn one_session(url: &Url, source: Option<IpAddr>, close: &[u8]) -> anyhow::Result<Duration> {
    let began = Instant::now();
    let (mut s, _) = connect(url, source).await?;
    let upgraded = began.elapsed();
    s.write_all(close).await?;
    let mut buf = [0u8; 256];
    tokio::time::timeout(Duration::from_secs(5), async {
        while s.read(&mut buf).await? > 0 {}
        anyhow::Ok(())
    })
    .await
    .context("the server did not close within 5 s")??;
    Ok(upgraded)
}
