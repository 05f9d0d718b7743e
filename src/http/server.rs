//! The listener: accepts TCP connections (plain or TLS), applies the connection-level limits,
//! serves HTTP/1.1 and HTTP/2 with hyper, and runs a hub.
//!
//! [`Server::start`] is what `main` and the integration tests call: it builds the hub and the
//! access rules, binds, starts the event sources, the stalled-subscriber reaper, the metrics
//! scrapers and the ingest-rate tick, and returns the bound address. [`Server::reload`] is what
//! SIGHUP does: read the configuration file again and put what changed in force without
//! dropping a stream or an event (`http/reload.rs`).

use super::direct::{self, Rewind, Sniffed};
use super::limits::{Activity, ConnLimiter, ConnRefused, TimedIo, Tracked};
use super::tls::TlsReloader;
use super::{ConnInfo, Ctx};
use crate::auth::Security;
use crate::config::memory::{H2_CONN_WINDOW, H2_SEND_BUF, H2_STREAMS, H2_STREAM_WINDOW};
use crate::config::Config;
use crate::hub::Hub;
use crate::ingest::{demo::DemoSource, socket::SocketSource, Source};
use crate::store::datadir::{DataDir, DataDirError};
use crate::subscriber::ConnHandle;
use crate::tap::history::HistoryTap;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// Opens `config`'s data directory, if it has one ([`DataDir::open`]), with the history
/// database it names; the one way a server opens it, before anything reads it.
pub fn open_data_dir(config: &Config) -> Result<Option<DataDir>, DataDirError> {
    let Some(dir) = config.data_dir.as_deref() else { return Ok(None) };
    let history = config.history.resolve_path(Some(dir));
    DataDir::open(dir, history.as_deref()).map(Some)
}

/// A running livetap server.
pub struct Server {
    /// The pipeline.
    pub hub: Arc<Hub>,
    /// Principals, live tokens, failure limiter.
    pub security: Arc<Security>,
    /// The address the listener is bound to.
    pub addr: SocketAddr,
    /// What each mail-log source reads (`file /var/log/mail.log (from its end)`, `syslog
    /// udp://127.0.0.1:5514`), for the banner.
    pub log_sources: Vec<String>,
    /// The outgoing webhooks (also the `Notify` targets of alerts).
    pub webhooks: Arc<crate::tap::webhook::Webhooks>,
    pub(super) tls: Option<Arc<TlsReloader>>,
    accept: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
    /// The opened data directory: its lock is held as long as the server lives.
    _data_dir: Option<DataDir>,
    /// The alerts' shared state (their evaluator takes what a reload puts in force).
    pub(super) alerts: Arc<crate::alert::Alerts>,
    /// What a reload compares and replaces; one reload at a time holds it.
    pub(super) state: tokio::sync::Mutex<super::reload::State>,
}

impl Server {
    /// Builds the hub from `config`, binds the listener and starts serving. The data
    /// directory, if any, is opened first ([`DataDir::open`]: versioned, migrated, locked).
    pub async fn start(config: Config, admin_token: String) -> std::io::Result<Server> {
        let data_dir = open_data_dir(&config).map_err(std::io::Error::other)?;
        Server::start_in(config, admin_token, data_dir).await
    }

    /// [`Server::start`] with the data directory already opened by the caller (`main`
    /// opens it before it reads the admin token kept there). `data_dir` must be
    /// `config.data_dir`'s, or `None` when there is none.
    pub async fn start_in(
        config: Config,
        admin_token: String,
        data_dir: Option<DataDir>,
    ) -> std::io::Result<Server> {
        debug_assert_eq!(data_dir.as_ref().map(|d| d.path()), config.data_dir.as_deref());
        let tls = match &config.tls {
            Some(files) => Some(Arc::new(TlsReloader::new(files)?)),
            None => None,
        };
        if tls.is_none() && !config.listen.ip().is_loopback() {
            tracing::warn!(listen = %config.listen, "serving plain HTTP on a non-loopback address (allow-plain-http)");
        }
        let listener = bind(config.listen)?;
        let addr = listener.local_addr()?;
        // Mail-log files are opened, the journal probed and syslog addresses bound before the
        // hub starts, so each problem stops livetap with its fix before anything runs.
        let logs = crate::ingest::logsource::prepare(&config).await.map_err(std::io::Error::other)?;
        let log_sources = logs.descriptions.clone();
        let hub = Hub::start(config, admin_token.clone())?;
        // Stalwart v0.16's event JSON, for `/api/live/tracing` (both `keyValues` forms), typed
        // by the catalogue's key kinds and the config's `[[keys]]`.
        let declared = hub.config.keys.iter().map(|k| (k.name.as_str(), k.kind.as_str()));
        crate::event::v016::register(&hub.dialects, &hub.catalogue, declared)
            .map_err(std::io::Error::other)?;
        // Taps before sources, so they see every event from the first.
        if let Some(writer) = hub.history_writer.clone() {
            hub.add_tap(Box::new(HistoryTap::new(writer))).await.map_err(std::io::Error::other)?;
        }
        crate::tap::sink::start(&hub).await?;
        // Outgoing webhooks are taps too: before the sources.
        let webhooks = crate::tap::webhook::Webhooks::start(&hub).await.map_err(std::io::Error::other)?;
        let security = Arc::new(Security::build(&hub.config, &admin_token, &hub.keys)?);
        let mut sources: Vec<Box<dyn Source>> = Vec::new();
        if let Some(path) = &hub.config.ingest_socket {
            sources.push(Box::new(SocketSource::bind(path)?));
        }
        if hub.config.demo {
            match hub.config.demo_traffic {
                crate::config::DemoTraffic::Stalwart => sources.push(Box::new(
                    DemoSource::new(hub.config.demo_rate).with_generation(hub.config.demo_generation),
                )),
                crate::config::DemoTraffic::Postfix => sources
                    .push(Box::new(crate::ingest::maillog::demo::MailLogDemo::new(hub.config.demo_rate))),
            }
        }
        let mut tasks = Vec::new();
        for s in sources {
            tracing::info!(source = s.name(), "starting event source");
            tasks.push(tokio::spawn(s.run(hub.clone())));
        }
        // Each mail-log source runs as a task of its own, kept with its table, so a reload
        // stops exactly the ones it removes or changes; the correlator's expiry (last, with no
        // table) runs as long as the server.
        let mut log_running = Vec::new();
        let mut log_configs = logs.configs.into_iter();
        for s in logs.sources {
            tracing::info!(source = s.name(), "starting event source");
            let task = tokio::spawn(s.run(hub.clone()));
            match log_configs.next() {
                Some(config) => log_running.push((config, task)),
                None => tasks.push(task),
            }
        }
        tasks.push(tokio::spawn(reaper(hub.clone())));
        if hub.history_writer.is_some() {
            tasks.push(tokio::spawn(sample_metrics(hub.clone())));
        }
        tasks.push(tokio::spawn(rate_tick(hub.clone())));
        for i in 0..hub.config.scrape.len() {
            tracing::info!(url = %hub.config.scrape[i].url, "scraping into the live metrics");
            tasks.push(tokio::spawn(crate::ingest::scrape::run(hub.clone(), i)));
        }
        // Alerts: conditions checked against the catalogue and webhook names against the
        // configured webhooks, which take their notifications through `Notify`.
        let notify: Arc<dyn crate::tap::Notify> = webhooks.clone();
        let (alerts, alert_task) = crate::alert::start(hub.clone(), notify).map_err(std::io::Error::other)?;
        tasks.extend(alert_task);
        let mut ctx = Ctx::new(hub.clone(), security.clone()).with_alerts(alerts.clone());
        ctx.webhooks = webhooks.clone();
        let accept = tokio::spawn(accept_loop(Arc::new(ctx), listener, tls.clone()));
        let state = super::reload::State::new(hub.config.clone(), admin_token, log_running, logs.shared);
        Ok(Server {
            hub,
            security,
            addr,
            log_sources,
            webhooks,
            tls,
            accept,
            tasks,
            alerts,
            state: tokio::sync::Mutex::new(state),
            _data_dir: data_dir,
        })
    }

    /// True when the listener speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Graceful shutdown (see [`Hub::shutdown`]); returns once streams are closed.
    pub async fn shutdown(self) {
        self.hub.shutdown().await;
        // The taps closed and flushed every webhook spool in the hub's shutdown; now the
        // senders stop (a batch in flight is sent again after the next start).
        self.webhooks.stop().await;
        self.state.into_inner().stop().await;
        let _ = self.accept.await;
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// The accept queue's length. The standard library's 128 overflows when hundreds of clients
/// connect at once (a restart that every dashboard and script reconnects to), and the kernel
/// then drops SYNs that clients retry only after a second; the kernel caps it at `somaxconn`.
const LISTEN_BACKLOG: u32 = 4096;

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    // As the standard library does: a restarted livetap can rebind while old connections of
    // the previous process linger in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Hands every metric's current reading to the history writer every `metric-interval-secs`.
async fn sample_metrics(hub: Arc<Hub>) {
    let Some(writer) = hub.history_writer.clone() else { return };
    let every = Duration::from_secs(hub.config.history.metric_interval_secs);
    let mut shutdown = hub.shutdown_signal();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick fires at once; skip it so the first sample covers a whole interval.
    tick.tick().await;
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let values = hub.metric_values(&crate::metrics::query::NameFilter::all());
                let samples = values.iter().map(crate::store::MetricSample::from).collect();
                writer.sample_metrics(crate::event::encode::now_secs(), samples);
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn reaper(hub: Arc<Hub>) {
    let mut shutdown = hub.shutdown_signal();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                // Read at every sweep: a reload may change it.
                let stall_ms = hub.current().stall_timeout_secs * 1000;
                hub.registry.reap_stalled(hub.clock.now_ms(), stall_ms);
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Samples the accepted-events total once a second for `livetap.events-per-second`, and notes
/// how far event ids were handed out (`Hub::mark_ids_used`).
async fn rate_tick(hub: Arc<Hub>) {
    let mut shutdown = hub.shutdown_signal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let accepted = hub.ingest.accepted.load(std::sync::atomic::Ordering::Relaxed);
                hub.metrics.own.tick(accepted);
                hub.mark_ids_used();
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Connections being refused at once, at most; past this, refused sockets are closed without
/// an answer, so a flood cannot pile up refusal tasks.
const MAX_REFUSING: usize = 256;

async fn accept_loop(ctx: Arc<Ctx>, listener: TcpListener, tls: Option<Arc<TlsReloader>>) {
    let hub = ctx.hub.clone();
    let mut shutdown = hub.shutdown_signal();
    let c = &hub.config;
    let limiter = ConnLimiter::new(c.max_connections, c.max_connections_per_ip, c.exempt_networks());
    let refusing = Arc::new(tokio::sync::Semaphore::new(MAX_REFUSING));
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of file descriptors or similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        // The caps in force (a reload may have changed them): one load per connection.
        let c = hub.current();
        limiter.set_caps(c.max_connections, c.max_connections_per_ip);
        let guard = match limiter.acquire(peer.ip()) {
            Ok(g) => g,
            Err(why) => {
                hub.ingest.connections_refused.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%peer, %why, "connection refused");
                // Past MAX_REFUSING refusals at once the socket is closed without an answer.
                if let Ok(permit) = refusing.clone().try_acquire_owned() {
                    let tls = tls.clone();
                    let handshake = Duration::from_secs(c.header_timeout_secs.min(5));
                    tokio::spawn(async move {
                        match tls {
                            None => refuse(stream, why).await,
                            Some(tls) => refuse_tls(&tls, stream, why, handshake).await,
                        }
                        drop(permit);
                    });
                }
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let ctx = ctx.clone();
        let tls = tls.clone();
        tokio::spawn(async move {
            let hub = &ctx.hub;
            hub.ingest.connections.fetch_add(1, Ordering::Relaxed);
            match tls {
                // Boxed, as hyper's connection below: the task of an idle connection holds
                // only what the plain path needs until it knows what it serves.
                Some(tls) => Box::pin(serve_tls(&ctx, &tls, stream, peer)).await,
                None => serve_plain(&ctx, stream, peer).await,
            }
            hub.ingest.connections.fetch_sub(1, Ordering::Relaxed);
            drop(guard);
        });
    }
}

/// A plain connection: a live-stream request is served directly (`direct.rs`), anything else
/// by hyper, which first reads again what the sniffing read.
async fn serve_plain(ctx: &Arc<Ctx>, mut stream: TcpStream, peer: SocketAddr) {
    let hub = &ctx.hub;
    let c = hub.current();
    let header_timeout = Duration::from_secs(c.header_timeout_secs);
    let max_head = c.max_url_bytes + c.max_header_bytes + 1024;
    // Boxed like every other phase before the stream: a future's size is that of its largest
    // state, and the task keeps that size for as long as the stream lives.
    let sniffed = Box::pin(direct::sniff(&mut stream, header_timeout, max_head)).await;
    match sniffed {
        Sniffed::Gone => {}
        Sniffed::Live(req) => direct::serve_live(ctx, stream, peer, req).await,
        Sniffed::Other(read) => {
            let write_timeout = Duration::from_secs(c.write_timeout_secs);
            let io = TimedIo::new(Rewind::new(read, stream), write_timeout, hub.clone());
            Box::pin(serve(ctx, io, peer, None)).await
        }
    }
}

/// A TLS connection: the handshake within the header timeout, then hyper in the version ALPN
/// chose.
async fn serve_tls(ctx: &Arc<Ctx>, tls: &TlsReloader, stream: TcpStream, peer: SocketAddr) {
    let hub = &ctx.hub;
    let c = hub.current();
    let header_timeout = Duration::from_secs(c.header_timeout_secs);
    let write_timeout = Duration::from_secs(c.write_timeout_secs);
    match tokio::time::timeout(header_timeout, tls.acceptor().accept(stream)).await {
        Ok(Ok(s)) => {
            let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
            serve(ctx, TimedIo::new(s, write_timeout, hub.clone()), peer, Some(h2)).await;
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
    }
}

/// The status, `Retry-After` seconds and JSON body of a refused connection's answer.
fn refusal(why: ConnRefused) -> (hyper::StatusCode, u32, String) {
    let (status, retry) = match why {
        ConnRefused::Total(_) => (hyper::StatusCode::SERVICE_UNAVAILABLE, 1),
        ConnRefused::PerIp(_) => (hyper::StatusCode::TOO_MANY_REQUESTS, 5),
    };
    let body = serde_json::json!({"error": "too many connections", "detail": why.to_string()}).to_string();
    (status, retry, body)
}

/// Answers a refused connection with a JSON `503`, then reads (and drops) what the client sent
/// for a moment so that closing does not reset the connection before the answer is read.
async fn refuse(mut stream: TcpStream, why: ConnRefused) {
    let (status, retry, body) = refusal(why);
    let answer = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\nretry-after: {retry}\r\n\
         connection: close\r\ncontent-length: {}\r\n\r\n{body}",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    direct::answer_and_close(&mut stream, answer.as_bytes()).await;
}

/// Answers a refused TLS connection the same way, in whichever HTTP version ALPN chose: the
/// handshake runs (bounded by `handshake` and by `MAX_REFUSING` at once), then every request
/// on the connection gets the refusal, and the connection closes after at most two seconds.
async fn refuse_tls(tls: &TlsReloader, stream: TcpStream, why: ConnRefused, handshake: Duration) {
    let Ok(Ok(s)) = tokio::time::timeout(handshake, tls.acceptor().accept(stream)).await else { return };
    let h2 = s.get_ref().1.alpn_protocol() == Some(b"h2");
    let svc = service_fn(move |_req| async move {
        let (status, retry, body) = refusal(why);
        let mut resp = hyper::Response::new(super::LiveBody::Full(Some(bytes::Bytes::from(body))));
        *resp.status_mut() = status;
        let h = resp.headers_mut();
        h.insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("application/json"));
        h.insert(hyper::header::RETRY_AFTER, retry.into());
        if !h2 {
            h.insert(hyper::header::CONNECTION, hyper::header::HeaderValue::from_static("close"));
        }
        Ok::<_, std::convert::Infallible>(resp)
    });
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    let io = TokioIo::new(s);
    let _ = if h2 {
        tokio::time::timeout(Duration::from_secs(2), builder.http2_only().serve_connection(io, svc)).await
    } else {
        let mut builder = builder.http1_only();
        builder.http1().keep_alive(false);
        tokio::time::timeout(Duration::from_secs(2), builder.serve_connection(io, svc)).await
    };
}

/// Serves one connection with hyper; `h2` is the protocol ALPN chose (`None`: detect it).
async fn serve<I>(ctx: &Arc<Ctx>, io: I, peer: SocketAddr, h2: Option<bool>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let c = ctx.hub.current();
    let handle = Arc::new(ConnHandle::default());
    let conn = Arc::new(ConnInfo { peer, handle: handle.clone() });
    let activity = Arc::new(Activity::default());
    let svc = {
        let ctx = ctx.clone();
        let activity = activity.clone();
        service_fn(move |req| {
            let flight = activity.begin();
            let handled = super::handle(ctx.clone(), conn.clone(), req.map(http_body_util::Either::Left));
            async move { Ok::<_, std::convert::Infallible>(handled.await?.map(|b| Tracked::new(b, flight))) }
        })
    };
    let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .writev(true)
        .timer(TokioTimer::new())
        .header_read_timeout(Duration::from_secs(c.header_timeout_secs))
        .max_buf_size(c.http1_buffer())
        .max_headers(128);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(H2_STREAMS)
        .max_header_list_size((c.max_header_bytes + c.max_url_bytes) as u32)
        .initial_stream_window_size(H2_STREAM_WINDOW)
        .initial_connection_window_size(H2_CONN_WINDOW)
        .max_send_buf_size(H2_SEND_BUF)
        .keep_alive_interval(Some(Duration::from_secs(c.ping_interval_secs)))
        .keep_alive_timeout(Duration::from_secs(c.write_timeout_secs));
    let builder = match h2 {
        Some(true) => builder.http2_only(),
        Some(false) => builder.http1_only(),
        None => builder,
    };
    let conn = builder.serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let idle_limit = Duration::from_secs(c.header_timeout_secs);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        _ = handle.killed() => {
            tracing::info!(%peer, "connection closed by the hub");
        }
        _ = activity.idle_past(idle_limit) => {
            // No request in flight for the idle limit. hyper closes an idle HTTP/1 keep-alive
            // connection by itself, but an HTTP/2 client that answers pings would keep its
            // place forever. A graceful shutdown sends GOAWAY (HTTP/2) or closes at once
            // (HTTP/1); a request that slipped in meanwhile gets a moment to finish.
            ctx.hub.ingest.idle_closed.fetch_add(1, Ordering::Relaxed);
            tracing::debug!(%peer, "idle connection closed");
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(2), conn.as_mut()).await;
        }
    }
}
