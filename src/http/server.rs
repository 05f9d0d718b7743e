//! The listener: accepts TCP connections, serves HTTP/1.1 and h2c with hyper, and runs a hub.
//!
//! [`Server::start`] is what `main` and the integration tests call: it builds the hub, binds,
//! starts the event sources, the stalled-subscriber reaper, the metrics scrapers and the
//! ingest-rate tick, and returns the bound address.

use crate::config::Config;
use crate::hub::Hub;
use crate::ingest::{demo::DemoSource, socket::SocketSource, Source};
use crate::subscriber::ConnHandle;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A running livetap server.
pub struct Server {
    /// The pipeline.
    pub hub: Arc<Hub>,
    /// The address the HTTP listener is bound to.
    pub addr: SocketAddr,
    accept: JoinHandle<()>,
    tasks: Vec<JoinHandle<()>>,
}

impl Server {
    /// Builds the hub from `config`, binds the listener and starts serving.
    pub async fn start(config: Config, admin_token: String) -> std::io::Result<Server> {
        let listener = TcpListener::bind(config.listen).await?;
        let addr = listener.local_addr()?;
        let hub = Hub::start(config, admin_token)?;
        let mut sources: Vec<Box<dyn Source>> = Vec::new();
        if let Some(path) = &hub.config.ingest_socket {
            sources.push(Box::new(SocketSource::bind(path)?));
        }
        if hub.config.demo {
            sources.push(Box::new(DemoSource::new(hub.config.demo_rate)));
        }
        let mut tasks = Vec::new();
        for s in sources {
            tracing::info!(source = s.name(), "starting event source");
            tasks.push(tokio::spawn(s.run(hub.clone())));
        }
        tasks.push(tokio::spawn(reaper(hub.clone())));
        tasks.push(tokio::spawn(rate_tick(hub.clone())));
        for i in 0..hub.config.scrape.len() {
            tracing::info!(url = %hub.config.scrape[i].url, "scraping into the live metrics");
            tasks.push(tokio::spawn(crate::metrics::scrape::run(hub.clone(), i)));
        }
        let accept = tokio::spawn(accept_loop(hub.clone(), listener));
        Ok(Server { hub, addr, accept, tasks })
    }

    /// Graceful shutdown (see [`Hub::shutdown`]); returns once streams are closed.
    pub async fn shutdown(self) {
        self.hub.shutdown().await;
        let _ = self.accept.await;
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

async fn reaper(hub: Arc<Hub>) {
    let stall_ms = hub.config.stall_timeout_secs * 1000;
    let mut shutdown = hub.shutdown_signal();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = tick.tick() => { hub.registry.reap_stalled(hub.clock.now_ms(), stall_ms); }
            _ = shutdown.changed() => return,
        }
    }
}

/// Samples the accepted-events total once a second for `livetap.events-per-second`.
async fn rate_tick(hub: Arc<Hub>) {
    let mut shutdown = hub.shutdown_signal();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let accepted = hub.ingest.accepted.load(std::sync::atomic::Ordering::Relaxed);
                hub.metrics.own.tick(accepted);
            }
            _ = shutdown.changed() => return,
        }
    }
}

async fn accept_loop(hub: Arc<Hub>, listener: TcpListener) {
    let mut shutdown = hub.shutdown_signal();
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
        let _ = stream.set_nodelay(true);
        let hub = hub.clone();
        tokio::spawn(async move {
            let conn_handle = Arc::new(ConnHandle::default());
            let svc = {
                let hub = hub.clone();
                let conn_handle = conn_handle.clone();
                service_fn(move |req| super::handle(hub.clone(), conn_handle.clone(), req))
            };
            let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
            builder
                .http1()
                .writev(true)
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(30))
                .max_buf_size(64 * 1024);
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                r = conn => {
                    if let Err(e) = r {
                        tracing::debug!(%peer, error = %e, "connection ended with an error");
                    }
                }
                _ = conn_handle.killed() => {
                    tracing::info!(%peer, "connection closed by the hub");
                }
            }
        });
    }
}
