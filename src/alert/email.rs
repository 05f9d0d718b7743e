//! Alert emails: one message per notification and address, sent through the `[smtp]` relay
//! with `lettre` on a spawned task under a timeout, so a slow or broken relay never delays
//! the evaluator. Failures are logged and counted ([`MailStats`]), never retried: the next
//! `repeat` or the resolve is the next chance, and the hub event was published anyway.

use super::{Notification, SmtpConfig, SmtpTls};
use lettre::message::header::ContentType;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Why the mailer could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The relay's settings.
    #[error("relay: {0}")]
    Relay(#[from] lettre::transport::smtp::Error),
    /// The sender's address.
    #[error("`from`: {0}")]
    From(#[from] lettre::address::AddressError),
}

/// Emails sent and failed. Written by the sending tasks, read by the alerts API; relaxed
/// ordering, as they are independent counters.
#[derive(Debug, Default)]
pub struct MailStats {
    /// Messages the relay accepted.
    pub sent: AtomicU64,
    /// Messages that failed (refused, unreachable relay, timeout).
    pub failed: AtomicU64,
}

/// The SMTP transport and the sender, built once at start.
#[derive(Clone)]
pub struct Mailer {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    timeout: Duration,
}

impl Mailer {
    /// A mailer for `c`.
    pub fn new(c: &SmtpConfig) -> Result<Mailer, MailError> {
        let timeout = Duration::from_secs(c.timeout_secs);
        let (mut b, port) = match c.tls {
            SmtpTls::None => (AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(&c.host), 25),
            SmtpTls::Starttls => (AsyncSmtpTransport::<Tokio1Executor>::starttls_relay(&c.host)?, 587),
            SmtpTls::Tls => (AsyncSmtpTransport::<Tokio1Executor>::relay(&c.host)?, 465),
        };
        b = b.port(c.port.unwrap_or(port)).timeout(Some(timeout));
        if let (Some(u), Some(p)) = (&c.username, &c.password) {
            b = b.credentials(Credentials::new(u.clone(), p.clone()));
        }
        Ok(Mailer { transport: b.build(), from: c.from.parse()?, timeout })
    }

    /// Sends `n` to `to` on a spawned task; the outcome is logged and counted in `stats`.
    pub fn send(&self, to: &str, n: &Notification<'_>, stats: Arc<MailStats>) {
        let subject = format!("[livetap] {} {}", n.alert.name, n.verb());
        let alert = n.alert.name.clone();
        let message = to.parse::<Mailbox>().map_err(|e| e.to_string()).and_then(|to| {
            Message::builder()
                .from(self.from.clone())
                .to(to)
                .subject(subject)
                .header(ContentType::TEXT_PLAIN)
                .body(n.text())
                .map_err(|e| e.to_string())
        });
        let message = match message {
            Ok(m) => m,
            Err(e) => {
                stats.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(alert = %alert, to, error = %e, "alert email not built");
                return;
            }
        };
        let me = self.clone();
        let to = to.to_string();
        tokio::spawn(async move {
            match tokio::time::timeout(me.timeout, me.transport.send(message)).await {
                Ok(Ok(_)) => {
                    stats.sent.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(alert = %alert, to = %to, "alert email sent");
                }
                Ok(Err(e)) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(alert = %alert, to = %to, error = %e, "alert email failed");
                }
                Err(_) => {
                    stats.failed.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(alert = %alert, to = %to, "alert email timed out");
                }
            }
        });
    }
}
