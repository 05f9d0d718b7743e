//! Handlers of the history query API: `GET /api/telemetry/traces`, `/api/telemetry/trace/{id}`
//! and `/api/telemetry/metrics`, answered from the embedded store (permission `history`).
//!
//! The store is whatever backend the hub opened (`dyn HistoryStore`); its calls may block,
//! so each query runs on the blocking pool. The answers are Stalwart's classic shapes
//! (`{"data":{"items":[…],"total":N}}` for lists, `{"data":[…]}` for a trace), and the events
//! in them are in the classic form (`event/classic.rs`), since these are the paths classic
//! clients read: the store keeps the full form, and each event is rewritten as it is answered.

use super::{json_ok, json_response, HttpError};
use crate::event::classic;
use crate::event::encode::now_secs;
use crate::hub::Hub;
use crate::store::{Data, HistoryStore, MetricQuery, StoredEvent, TraceQuery};
use http::{Response, StatusCode};
use std::sync::Arc;

fn store(hub: &Hub) -> Result<Arc<dyn HistoryStore>, HttpError> {
    hub.history_store.clone().ok_or(HttpError::HistoryOff)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::store::StoreError> + Send + 'static,
) -> Result<T, HttpError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(HttpError::Internal(format!("history store: {e}"))),
        Err(e) => Err(HttpError::Internal(format!("history query failed: {e}"))),
    }
}

/// Appends `events` to `out` as a JSON array of their classic forms, each with
/// `data.spanId` when `with_span` (the traces list's `values=1` items).
fn write_classic_array<'a>(
    events: impl IntoIterator<Item = &'a StoredEvent>,
    with_span: bool,
    out: &mut Vec<u8>,
) -> Result<(), HttpError> {
    out.push(b'[');
    for (i, e) in events.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        let span = if with_span { e.span_id } else { None };
        classic::write_event(&e.json, span, out)
            .map_err(|err| HttpError::Internal(format!("history store: event {}: {err}", e.id())))?;
    }
    out.push(b']');
    Ok(())
}

/// `GET /api/telemetry/traces?type=&queue_id=&id=&filter=&before=&after=&page=&limit=&values=`.
/// A list that names no time and no span covers the last 24 hours
/// ([`TraceQuery::default_window`]). Items are span summaries, or with `values=1` each span's
/// first stored event in the classic form, carrying `data.spanId` (what the old web admin's
/// history pages decode).
pub(super) async fn traces(hub: &Hub, query: &str) -> Result<Response<super::LiveBody>, HttpError> {
    let mut q = TraceQuery::from_query_string(query)?;
    q.default_window(now_secs());
    let s = store(hub)?;
    if !q.values {
        let page = blocking(move || s.traces(&q)).await?;
        return Ok(json_ok(StatusCode::OK, &Data { data: page }));
    }
    let (ids, total, mut firsts) = blocking(move || {
        let page = s.traces(&q)?;
        let ids: Vec<u64> = page.items.iter().map(|t| t.id).collect();
        let firsts = s.first_events(&ids)?;
        Ok((ids, page.total, firsts))
    })
    .await?;
    // The page's order (newest span first); a span removed by retention between the two
    // reads is left out of the items, not of the total.
    let rank: ahash::AHashMap<u64, usize> = ids.iter().enumerate().map(|(i, &id)| (id, i)).collect();
    firsts.sort_by_key(|e| e.span_id.and_then(|id| rank.get(&id).copied()));
    let mut body = Vec::with_capacity(64 + firsts.iter().map(|e| e.json.len() + 32).sum::<usize>());
    body.extend_from_slice(b"{\"data\":{\"items\":");
    write_classic_array(&firsts, true, &mut body)?;
    body.extend_from_slice(b",\"total\":");
    body.extend_from_slice(itoa::Buffer::new().format(total).as_bytes());
    body.extend_from_slice(b"}}");
    Ok(json_response(StatusCode::OK, body))
}

/// `GET /api/telemetry/trace/{id}`: every stored event of one span, in order.
pub(super) async fn trace(hub: &Hub, id: &str) -> Result<Response<super::LiveBody>, HttpError> {
    let span: u64 = id.parse().map_err(|_| HttpError::NotFound)?;
    let s = store(hub)?;
    let events = blocking(move || s.trace(span)).await?;
    if events.is_empty() {
        return Err(HttpError::NotFound);
    }
    let mut body = Vec::with_capacity(16 + events.iter().map(|e| e.json.len() + 1).sum::<usize>());
    body.extend_from_slice(b"{\"data\":");
    write_classic_array(&events, false, &mut body)?;
    body.push(b'}');
    Ok(json_response(StatusCode::OK, body))
}

/// `GET /api/telemetry/metrics?after=&before=&metrics=`.
pub(super) async fn metrics(hub: &Hub, query: &str) -> Result<Response<super::LiveBody>, HttpError> {
    let q = MetricQuery::from_query_string(query)?;
    let s = store(hub)?;
    let page = blocking(move || s.metrics(&q)).await?;
    Ok(json_ok(StatusCode::OK, &Data { data: page }))
}
