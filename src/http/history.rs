//! Handlers of the history query API: `GET /api/telemetry/traces`, `/api/telemetry/trace/{id}`
//! and `/api/telemetry/metrics`, answered from the embedded store (permission `history`).
//!
//! The store is whatever backend the hub opened (`dyn HistoryStore`); its calls may block,
//! so each query runs on the blocking pool. The answers are Stalwart's classic shapes
//! (`{"data":{"items":[…],"total":N}}` for lists, `{"data":[…]}` for a trace).

use super::{json_ok, json_response, HttpError};
use crate::hub::Hub;
use crate::store::{write_json_array, Data, HistoryStore, MetricQuery, TraceQuery};
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

/// `GET /api/telemetry/traces?type=&queue_id=&filter=&before=&after=&page=&limit=`.
pub(super) async fn traces(hub: &Hub, query: &str) -> Result<Response<super::LiveBody>, HttpError> {
    let q = TraceQuery::from_query_string(query)?;
    let s = store(hub)?;
    let page = blocking(move || s.traces(&q)).await?;
    Ok(json_ok(StatusCode::OK, &Data { data: page }))
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
    write_json_array(&events, &mut body);
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
