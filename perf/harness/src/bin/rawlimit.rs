//! `rawlimit`: the machine's own limit for the fan-out livetap does. It writes pre-built SSE
//! frames with `writev` to N loopback TCP sockets (one writer thread) while one reader thread
//! drains them, and reports the bytes per second that arrive.
//!
//! livetap's delivered bytes per second in `firehose-100` are reported as a fraction of this,
//! measured in the same run. Usage:
//! `rawlimit [--sockets N] [--frame-bytes B] [--frames-per-call K] [--seconds S] [--json]`.

use std::io::{ErrorKind, IoSlice, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Opts {
    sockets: usize,
    frame_bytes: usize,
    per_call: usize,
    seconds: f64,
    json: bool,
}

fn opts() -> Opts {
    let mut o = Opts { sockets: 100, frame_bytes: 280, per_call: 64, seconds: 5.0, json: false };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().and_then(|v| v.parse::<f64>().ok()).expect("a number after the flag");
        match a.as_str() {
            "--sockets" => o.sockets = val() as usize,
            "--frame-bytes" => o.frame_bytes = val() as usize,
            "--frames-per-call" => o.per_call = val() as usize,
            "--seconds" => o.seconds = val(),
            "--json" => o.json = true,
            other => {
                eprintln!("unknown flag {other}");
                std::process::exit(2);
            }
        }
    }
    o
}

/// An SSE frame of exactly `size` bytes, shaped like livetap's (`id:`, `event:`, `data:`).
fn frame(size: usize) -> Vec<u8> {
    let mut f = b"id: 123456\nevent: trace\ndata: [{\"type\":\"smtp.rcpt-to\",\"data\":{\"p\":\"".to_vec();
    let tail = b"\"}}]\n\n";
    while f.len() + tail.len() < size {
        f.push(b'x');
    }
    f.extend_from_slice(tail);
    f
}

fn main() -> std::io::Result<()> {
    let o = opts();
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let mut readers = Vec::with_capacity(o.sockets);
    let mut writers = Vec::with_capacity(o.sockets);
    for _ in 0..o.sockets {
        let c = TcpStream::connect(addr)?;
        let (s, _) = listener.accept()?;
        c.set_nonblocking(true)?;
        s.set_nonblocking(true)?;
        s.set_nodelay(true)?;
        readers.push(c);
        writers.push(s);
    }
    let f = frame(o.frame_bytes);
    // Separate flags: the reader must outlive the writer, or closing the reading ends resets
    // connections the writer is still writing to.
    let stop = Arc::new(AtomicBool::new(false));
    let stop_reader = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let (stop_r, recv_r) = (stop_reader.clone(), received.clone());
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        while !stop_r.load(Ordering::Relaxed) {
            for r in readers.iter_mut() {
                match r.read(&mut buf) {
                    Ok(n) => {
                        recv_r.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("read: {e}"),
                }
            }
        }
    });
    let stop_w = stop.clone();
    let per_call = o.per_call;
    let writer = std::thread::spawn(move || {
        let slices: Vec<IoSlice<'_>> = (0..per_call).map(|_| IoSlice::new(&f)).collect();
        let mut calls = 0u64;
        while !stop_w.load(Ordering::Relaxed) {
            for w in writers.iter_mut() {
                // Partial writes are fine: the reader only counts bytes.
                match w.write_vectored(&slices) {
                    Ok(_) => calls += 1,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(e) => panic!("writev: {e}"),
                }
            }
        }
        calls
    });
    // Warm up for half a second, then measure.
    std::thread::sleep(Duration::from_millis(500));
    let start = Instant::now();
    let b0 = received.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_secs_f64(o.seconds));
    let bytes = received.load(Ordering::Relaxed) - b0;
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::SeqCst);
    let calls = writer.join().expect("writer");
    stop_reader.store(true, Ordering::SeqCst);
    reader.join().expect("reader");
    let rate = bytes as f64 / secs;
    if o.json {
        println!(
            "{{\"sockets\":{},\"frame_bytes\":{},\"frames_per_call\":{},\"bytes_per_sec\":{rate:.0},\"writev_calls\":{calls}}}",
            o.sockets, o.frame_bytes, o.per_call
        );
    } else {
        println!(
            "rawlimit: {} sockets, {}-byte frames, {} per writev: {:.1} MB/s ({:.0} frames/s)",
            o.sockets,
            o.frame_bytes,
            o.per_call,
            rate / 1e6,
            rate / o.frame_bytes as f64
        );
    }
    Ok(())
}
