//! The HTTP API inside `klines ingest`: health and readiness for the
//! operator's load balancer and systemd, Prometheus metrics, and read
//! access to silver and gold for tools (`/v1/symbols`, `/v1/candles`,
//! `/v1/completeness`), and operators' gap backfills (`/v1/backfills`,
//! POST guarded by `KLINES_API_KEY`).
//!
//! Errors are JSON `{error, detail}`: 400 for a malformed parameter (named,
//! with why), 404 for an unknown symbol, 422 for a range that cannot be
//! served; never a stack trace or SQL text (database errors are logged and
//! answered with a generic 500/503).

mod backfills;
mod query;
mod status;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::domain::ExchangeId;
use crate::telemetry::metrics::ExchangeLabels;
use crate::telemetry::Metrics;
pub use backfills::Backfills;
pub use query::{CandleQuery, Interval, MAX_LIMIT};
pub use status::StatusInfo;

/// The OpenAPI 3.1 document of this API, served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("openapi.json");

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    pub pool: PgPool,
    pub metrics: Arc<Metrics>,
    /// The exchanges this process ingests (readiness checks each).
    pub exchanges: Vec<ExchangeId>,
    /// Readiness tolerates exchanges without a connection this long after
    /// start (connecting, first reconnect).
    pub started: std::time::Instant,
    pub connect_grace: Duration,
    /// Bronze rows waiting in the disk spool above which the sink counts
    /// as backlogged.
    pub max_spool_rows: i64,
    /// `POST /v1/backfills`; `None` where this process cannot run them.
    pub backfills: Option<Arc<Backfills>>,
    /// The status page's sources (instance, pairs, clocks, leadership).
    pub status: Arc<StatusInfo>,
    /// `Some(key)`: the data endpoints and the status page need it too
    /// (`[api] protect_reads`).
    pub read_key: Option<String>,
}

/// An API error: status, a stable code and a human detail.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl ApiError {
    pub fn bad_request(detail: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: "bad_request",
            detail: detail.into(),
        }
    }
    pub fn too_many_requests(detail: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "too_many_requests",
            detail: detail.into(),
        }
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::NOT_FOUND,
            code: "not_found",
            detail: detail.into(),
        }
    }
    pub fn unprocessable(detail: impl Into<String>) -> Self {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            code: "invalid_range",
            detail: detail.into(),
        }
    }
    /// A database failure: logged in full, answered without SQL or
    /// internals.
    fn database(e: sqlx::Error) -> Self {
        error!(error = %e, "API query failed");
        ApiError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "unavailable",
            detail: "the database could not answer; retry later".into(),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        ApiError::database(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(json!({"error": self.code, "detail": self.detail})),
        )
            .into_response()
    }
}

pub fn router(state: ApiState) -> Router {
    // The data and the status page: open, or behind the key.
    let mut reads = Router::new()
        .route("/", get(status::page))
        .route("/v1/symbols", get(query::symbols))
        .route("/v1/candles", get(query::candles))
        .route("/v1/completeness", get(query::completeness))
        .route("/v1/audit", get(query::audit))
        .route("/v1/backfills", get(backfills::list))
        .route("/v1/backfills/{id}", get(backfills::get_one));
    if state.read_key.is_some() {
        reads = reads.route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_read_key,
        ));
    }
    Router::new()
        .merge(reads)
        .route("/v1/backfills", axum::routing::post(backfills::create))
        .route("/v1/openapi.json", get(openapi))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { ApiError::not_found("no such endpoint; see /v1/openapi.json") })
        .with_state(state)
}

/// Serves until `cancel`.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    cancel: CancellationToken,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "HTTP API listening");
    }
    tokio::spawn(status::sampler(state.clone(), cancel.clone()));
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}

async fn require_read_key(
    State(s): State<ApiState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(key) = s.read_key.as_deref() else {
        return next.run(request).await;
    };
    match backfills::check_key(key, request.headers()) {
        Ok(()) => next.run(request).await,
        Err(e) => {
            let mut r = e.into_response();
            // Lets a browser ask for the key (as the Basic password).
            r.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"klines\", charset=\"UTF-8\""),
            );
            r
        }
    }
}

async fn openapi() -> Response {
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        OPENAPI,
    )
        .into_response()
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(s): State<ApiState>) -> Response {
    let db = tokio::time::timeout(
        Duration::from_secs(2),
        sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&s.pool),
    )
    .await;
    let (db_ok, db_detail) = match db {
        Ok(Ok(_)) => (true, "reachable".to_owned()),
        Ok(Err(e)) => {
            error!(error = %e, "Readiness: database check failed");
            (false, "query failed".to_owned())
        }
        Err(_) => (false, "no answer within 2 s".to_owned()),
    };
    let in_grace = s.started.elapsed() < s.connect_grace;
    let mut exchanges = serde_json::Map::new();
    let mut feeds_ok = true;
    for e in &s.exchanges {
        let open = s
            .metrics
            .connections
            .get_or_create(&ExchangeLabels {
                exchange: e.as_str(),
            })
            .get();
        let ok = open > 0 || in_grace;
        feeds_ok &= ok;
        exchanges.insert(
            e.as_str().to_owned(),
            json!({"ok": ok, "open_connections": open}),
        );
    }
    let spool_rows = s.metrics.bronze_spool_rows.get();
    let sink_ok = spool_rows <= s.max_spool_rows;
    let ready = db_ok && feeds_ok && sink_ok;
    let body = json!({
        "ready": ready,
        "checks": {
            "database": {"ok": db_ok, "detail": db_detail},
            "exchanges": exchanges,
            "bronze_sink": {"ok": sink_ok, "spool_rows": spool_rows, "max_spool_rows": s.max_spool_rows},
        }
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

/// OpenMetrics for clients that ask for it (Prometheus does), the classic
/// text format otherwise.
async fn metrics(State(s): State<ApiState>, request: HeaderMap) -> Response {
    let openmetrics = request
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    let mut headers = HeaderMap::new();
    let body = if openmetrics {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
        );
        s.metrics.encode()
    } else {
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        s.metrics.encode_prometheus()
    };
    (headers, body).into_response()
}

/// The parameters of a request, for handlers that parse them themselves
/// (precise messages instead of the extractor's generic ones).
pub(crate) type Params = Query<std::collections::HashMap<String, String>>;
