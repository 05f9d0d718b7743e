//! `webhooksink`: a fast HTTP/1.1 receiver for livetap's outgoing webhooks in benchmarks. It
//! answers every POST with `200` as soon as the body is read, counts the events in each body
//! (`{"id":"` openings for the Stalwart shape, lines for NDJSON), prints events/s once a
//! second, and at the end the total and the mean rate between the first and the last event.
//!
//!   webhooksink --listen 127.0.0.1:9700 [--seconds 10]
//!
//! It is deliberately minimal (Content-Length bodies only, which is what livetap sends) so
//! that the receiver is never the bottleneck being measured.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Counts {
    events: AtomicU64,
    bodies: AtomicU64,
    bytes: AtomicU64,
    /// Microseconds since the start at the first and the last event.
    first_us: AtomicU64,
    last_us: AtomicU64,
}

fn count_events(body: &[u8]) -> u64 {
    if body.first() == Some(&b'{') && body.starts_with(b"{\"events\":[") {
        memchr::memmem::find_iter(body, b"{\"id\":\"").count() as u64
    } else {
        memchr::memchr_iter(b'\n', body).count() as u64
    }
}

async fn serve(mut s: tokio::net::TcpStream, c: Arc<Counts>, start: Instant) {
    let mut buf: Vec<u8> = Vec::with_capacity(2 << 20);
    let mut filled = 0usize;
    loop {
        // The head.
        let head_end = loop {
            if let Some(p) = memchr::memmem::find(&buf[..filled], b"\r\n\r\n") {
                break p + 4;
            }
            if buf.len() < filled + 65536 {
                buf.resize(filled + 65536, 0);
            }
            match s.read(&mut buf[filled..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => filled += n,
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0)))
            .unwrap_or(0);
        let total = head_end + len;
        if buf.len() < total {
            buf.resize(total, 0);
        }
        while filled < total {
            match s.read(&mut buf[filled..]).await {
                Ok(0) | Err(_) => return,
                Ok(n) => filled += n,
            }
        }
        let n = count_events(&buf[head_end..total]);
        let now = start.elapsed().as_micros() as u64;
        let _ = c.first_us.compare_exchange(0, now.max(1), Ordering::Relaxed, Ordering::Relaxed);
        c.last_us.store(now, Ordering::Relaxed);
        c.events.fetch_add(n, Ordering::Relaxed);
        c.bodies.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(len as u64, Ordering::Relaxed);
        if s.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.is_err() {
            return;
        }
        buf.copy_within(total..filled, 0);
        filled -= total;
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:9700".into());
    let seconds: Option<u64> = arg("--seconds").and_then(|s| s.parse().ok());
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    eprintln!("webhooksink listening on {}", listener.local_addr()?);
    let c = Arc::new(Counts::default());
    let start = Instant::now();
    {
        let c = c.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let _ = s.set_nodelay(true);
                tokio::spawn(serve(s, c.clone(), start));
            }
        });
    }
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.tick().await;
    let mut last = 0;
    let deadline = seconds.map(|s| start + Duration::from_secs(s));
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tokio::signal::ctrl_c() => break,
        }
        let now = c.events.load(Ordering::Relaxed);
        if now != last {
            println!("{:>8.1}s  {:>10} events/s", start.elapsed().as_secs_f64(), now - last);
        }
        last = now;
        if deadline.is_some_and(|d| Instant::now() >= d) {
            break;
        }
    }
    let events = c.events.load(Ordering::Relaxed);
    let span =
        (c.last_us.load(Ordering::Relaxed).saturating_sub(c.first_us.load(Ordering::Relaxed))) as f64 / 1e6;
    let bodies = c.bodies.load(Ordering::Relaxed).max(1);
    println!(
        "webhooksink: {events} events in {} bodies (mean {:.0} KiB), {:.0} events/s between the first and the last",
        c.bodies.load(Ordering::Relaxed),
        c.bytes.load(Ordering::Relaxed) as f64 / bodies as f64 / 1024.0,
        if span > 0.0 { events as f64 / span } else { 0.0 }
    );
    Ok(())
}
