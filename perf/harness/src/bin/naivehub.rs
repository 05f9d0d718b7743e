//! `naivehub`: the linear baseline the harness compares livetap with. Events from a Unix
//! socket go into one `tokio::sync::broadcast` channel; every subscriber task receives every
//! event, evaluates its own filter on it, and writes matching events as SSE frames.
//!
//! It uses livetap's own event builder and query evaluator, so the only difference measured is
//! the design: per-subscriber filtering of every event instead of one shared index.
//! Usage: `naivehub ADDR SOCKET_PATH`.

use livetap::event::{Catalogue, Event, EventBuilder, KeyRegistry, RawValue};
use livetap::query::{parse_pairs, Expr, Limits};
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener};
use tokio::sync::broadcast;

struct Shared {
    catalogue: Catalogue,
    keys: KeyRegistry,
    tx: broadcast::Sender<(u64, Arc<Event>)>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: naivehub ADDR SOCKET_PATH");
        std::process::exit(2);
    }
    let (catalogue, keys) = Catalogue::with_keys(1024);
    let (tx, _) = broadcast::channel(65_536);
    let shared = Arc::new(Shared { catalogue, keys, tx });
    let http = TcpListener::bind(&args[1]).await?;
    let sock = UnixListener::bind(&args[2])?;
    let s2 = shared.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = sock.accept().await {
            let s = s2.clone();
            tokio::spawn(async move { ingest(conn, s).await });
        }
    });
    loop {
        let (conn, _) = http.accept().await?;
        let _ = conn.set_nodelay(true);
        let s = shared.clone();
        tokio::spawn(async move {
            let _ = subscriber(conn, s).await;
        });
    }
}

async fn ingest(conn: tokio::net::UnixStream, shared: Arc<Shared>) {
    let mut lines = BufReader::with_capacity(1 << 20, conn);
    let mut line = Vec::new();
    let mut seq = 0u64;
    loop {
        line.clear();
        match lines.read_until(b'\n', &mut line).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.is_empty() {
            continue;
        }
        let ev = {
            let mut b = EventBuilder::new(&shared.catalogue, &shared.keys);
            let Ok(raw) = RawValue::parse_serde(text) else { continue };
            match b.build(&raw, 0) {
                Ok(ev) => Arc::new(ev),
                Err(_) => continue,
            }
        };
        seq += 1;
        // A broadcast never waits: a receiver that falls behind loses the oldest events and
        // is told how many (the naive design's slow-consumer behaviour).
        let _ = shared.tx.send((seq, ev));
    }
}

async fn subscriber(mut conn: TcpStream, shared: Arc<Shared>) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 || head.len() > 65_536 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&head);
    let target = text.split_whitespace().nth(1).unwrap_or("/");
    let query = target.split_once('?').map_or("", |(_, q)| q);
    let filter: Expr = match parse_pairs(query, &shared.keys, &Limits::default()) {
        Ok(q) => q.expr,
        Err(e) => {
            let body = format!("{{\"error\":\"{e}\"}}");
            let r = format!("HTTP/1.1 400 Bad Request\r\nContent-Length: {}\r\n\r\n{body}", body.len());
            return conn.write_all(r.as_bytes()).await;
        }
    };
    let mut rx = shared.tx.subscribe();
    conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\r\n")
        .await?;
    let mut out = Vec::with_capacity(1 << 16);
    loop {
        out.clear();
        let mut last = 0;
        let mut n = 0;
        let first = rx.recv().await;
        let mut next = Some(first);
        while let Some(item) = next.take() {
            match item {
                Ok((seq, ev)) => {
                    if filter.eval(&ev) {
                        out.extend_from_slice(if n == 0 { b"event: trace\ndata: [" } else { b"," });
                        out.extend_from_slice(&ev.json);
                        n += 1;
                        last = seq;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(d)) => {
                    if n > 0 {
                        close_frame(&mut out, last);
                        n = 0;
                    }
                    out.extend_from_slice(format!("event: lagged\ndata: {{\"dropped\":{d}}}\n\n").as_bytes());
                }
                Err(broadcast::error::RecvError::Closed) => return Ok(()),
            }
            if n < 1024 {
                next = match rx.try_recv() {
                    Ok(v) => Some(Ok(v)),
                    Err(broadcast::error::TryRecvError::Lagged(d)) => {
                        Some(Err(broadcast::error::RecvError::Lagged(d)))
                    }
                    Err(_) => None,
                };
            }
        }
        if n > 0 {
            close_frame(&mut out, last);
        }
        if !out.is_empty() {
            conn.write_all(&out).await?;
        }
    }
}

fn close_frame(out: &mut Vec<u8>, last: u64) {
    out.extend_from_slice(b"]\nid: ");
    out.extend_from_slice(itoa::Buffer::new().format(last).as_bytes());
    out.extend_from_slice(b"\n\n");
}
