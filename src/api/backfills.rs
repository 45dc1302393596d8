//! `POST /v1/backfills` (an operator's gap backfill, guarded by the API
//! key) and `GET /v1/backfills[/{id}]` (the jobs in `ops.backfill_jobs`,
//! whoever started them: the schedules, the CLI or the API).
//!
//! The key comes from `KLINES_API_KEY` only, is compared in constant time,
//! and is never logged or echoed. Without a key, POST is disabled (403).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use sqlx::Row;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::query::parse_time;
use super::{ApiError, ApiState};
use crate::backfill::{Backfiller, JobSpec, Quiet};
use crate::domain::ExchangeId;

/// What POST needs: the key, a backfiller per ingested exchange (sharing
/// the service's REST budget) and the pairs each ingests.
pub struct Backfills {
    pub api_key: Option<String>,
    pub backfillers: BTreeMap<ExchangeId, Arc<Backfiller>>,
    pub pairs: BTreeMap<ExchangeId, Vec<String>>,
    /// Cancels running API jobs at shutdown.
    pub cancel: CancellationToken,
    /// Per exchange, the jobs waiting for its runner (one job at a time).
    queues: BTreeMap<ExchangeId, mpsc::Sender<(i64, JobSpec)>>,
    /// How many jobs may wait per exchange.
    depth: usize,
}

/// A queued job: its id and what it does.
type Queued = (i64, JobSpec);

impl Backfills {
    /// The API's backfills, with one runner task per exchange (on `tasks`)
    /// taking its queued jobs one at a time; at most `depth` wait.
    pub fn new(
        api_key: Option<String>,
        backfillers: BTreeMap<ExchangeId, Arc<Backfiller>>,
        pairs: BTreeMap<ExchangeId, Vec<String>>,
        cancel: CancellationToken,
        depth: usize,
        tasks: &tokio_util::task::TaskTracker,
    ) -> Backfills {
        let mut queues = BTreeMap::new();
        for (id, backfiller) in &backfillers {
            let (tx, rx) = mpsc::channel::<Queued>(depth.max(1));
            tasks.spawn(runner(Arc::clone(backfiller), rx, cancel.clone()));
            queues.insert(*id, tx);
        }
        Backfills {
            api_key,
            backfillers,
            pairs,
            cancel,
            queues,
            depth,
        }
    }
}

/// Runs an exchange's API jobs in order, one at a time, until `cancel`;
/// jobs still waiting then are marked cancelled (they never started).
async fn runner(
    backfiller: Arc<Backfiller>,
    mut jobs: mpsc::Receiver<Queued>,
    cancel: CancellationToken,
) {
    loop {
        let job = tokio::select! {
            _ = cancel.cancelled() => break,
            job = jobs.recv() => job,
        };
        let Some((id, spec)) = job else {
            return;
        };
        if let Err(e) = backfiller.execute(id, &spec, &Quiet, &cancel).await {
            warn!(job = id, error = %e, "API backfill failed");
        }
    }
    jobs.close();
    let mut left = Vec::new();
    while let Ok((id, _)) = jobs.try_recv() {
        left.push(id);
    }
    if !left.is_empty() {
        let marked = sqlx::query(
            "UPDATE ops.backfill_jobs SET status = 'cancelled', finished_at = now(),
                    error = 'the service stopped before the job ran; request it again'
              WHERE id = ANY($1) AND status = 'queued'",
        )
        .bind(&left)
        .execute(&backfiller.pool)
        .await;
        if let Err(e) = marked {
            warn!(jobs = left.len(), error = %e, "Could not mark queued API backfills cancelled");
        }
    }
}

/// Byte-wise comparison whose time does not depend on where the inputs
/// differ (only on their lengths).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn unauthorized(detail: &str) -> ApiError {
    ApiError {
        status: StatusCode::UNAUTHORIZED,
        code: "unauthorized",
        detail: detail.into(),
    }
}

fn forbidden(detail: &str) -> ApiError {
    ApiError {
        status: StatusCode::FORBIDDEN,
        code: "forbidden",
        detail: detail.into(),
    }
}

fn authorize(b: &Backfills, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(key) = b.api_key.as_deref().filter(|k| !k.is_empty()) else {
        return Err(forbidden(
            "backfills over the API are disabled: start klines with KLINES_API_KEY set",
        ));
    };
    check_key(key, headers)
}

/// The key a request carries: `Authorization: Bearer <key>`, `X-API-Key:
/// <key>`, or the password of `Authorization: Basic` (browsers).
fn given_key(headers: &HeaderMap) -> Option<String> {
    let auth = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    if let Some(k) = auth.and_then(|v| v.strip_prefix("Bearer ")) {
        return Some(k.trim().to_owned());
    }
    if let Some(b64) = auth.and_then(|v| v.strip_prefix("Basic ")) {
        use base64::Engine as _;
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        return text.split_once(':').map(|(_, pw)| pw.to_owned());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|k| k.trim().to_owned())
}

/// 401 without a key, 403 with a wrong one; compared in constant time.
pub(super) fn check_key(key: &str, headers: &HeaderMap) -> Result<(), ApiError> {
    match given_key(headers) {
        None => Err(unauthorized(
            "an API key is required: `Authorization: Bearer <key>` or `X-API-Key: <key>`",
        )),
        Some(g) if constant_time_eq(g.as_bytes(), key.as_bytes()) => Ok(()),
        Some(_) => Err(forbidden("the API key is not valid")),
    }
}

/// A parsed, validated request body.
#[derive(Debug)]
struct Request {
    exchange: ExchangeId,
    symbols: Vec<String>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    dry_run: bool,
}

const FIELDS: &[&str] = &[
    "exchange", "symbol", "symbols", "all", "from", "to", "dry_run",
];

fn parse_body(body: &[u8], b: &Backfills) -> Result<Request, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body: not JSON ({e})")))?;
    let Value::Object(obj) = value else {
        return Err(ApiError::bad_request(
            "body: expected a JSON object like {\"exchange\":\"binance\",\"symbol\":\"BTCUSDT\",\"from\":\"…\",\"to\":\"…\"}",
        ));
    };
    if let Some(k) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "body: unknown field `{k}`; expected: {}",
            FIELDS.join(", ")
        )));
    }
    let text = |name: &str| -> Result<Option<&str>, ApiError> {
        match obj.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(ApiError::bad_request(format!("{name}: must be a string"))),
        }
    };
    let exchange: ExchangeId = text("exchange")?
        .ok_or_else(|| ApiError::bad_request("exchange: required"))?
        .parse()
        .map_err(|e: String| ApiError::bad_request(format!("exchange: {e}")))?;
    let ingested = b.pairs.get(&exchange).ok_or_else(|| {
        ApiError::not_found(format!(
            "exchange {exchange} is not ingested by this service"
        ))
    })?;
    let all = match obj.get("all") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(v)) => *v,
        Some(_) => return Err(ApiError::bad_request("all: must be true or false")),
    };
    let mut symbols: Vec<String> = Vec::new();
    if let Some(s) = text("symbol")? {
        symbols.push(s.trim().to_ascii_uppercase());
    }
    match obj.get("symbols") {
        None | Some(Value::Null) => {}
        Some(Value::Array(items)) => {
            for item in items {
                match item {
                    Value::String(s) => symbols.push(s.trim().to_ascii_uppercase()),
                    _ => {
                        return Err(ApiError::bad_request(
                            "symbols: must be an array of strings",
                        ))
                    }
                }
            }
        }
        Some(_) => {
            return Err(ApiError::bad_request(
                "symbols: must be an array of strings",
            ))
        }
    }
    match (all, symbols.is_empty()) {
        (true, false) => {
            return Err(ApiError::bad_request(
                "all: give either `all: true` or symbol/symbols, not both",
            ))
        }
        (false, true) => {
            return Err(ApiError::bad_request(
                "symbol: required (or `symbols: [...]`, or `all: true`)",
            ))
        }
        (true, true) => symbols = ingested.clone(),
        (false, false) => {
            symbols.sort();
            symbols.dedup();
            if let Some(unknown) = symbols.iter().find(|s| !ingested.contains(s)) {
                return Err(ApiError::not_found(format!(
                    "{exchange} {unknown} is not ingested by this service (pairs: {})",
                    ingested.join(", ")
                )));
            }
        }
    }
    let from = parse_time(
        "from",
        text("from")?.ok_or_else(|| ApiError::bad_request("from: required"))?,
    )?;
    let to = parse_time(
        "to",
        text("to")?.ok_or_else(|| ApiError::bad_request("to: required"))?,
    )?;
    if from >= to {
        return Err(ApiError::unprocessable(format!(
            "from ({}) must be before to ({})",
            from.to_rfc3339(),
            to.to_rfc3339()
        )));
    }
    if to > Utc::now() + chrono::Duration::minutes(1) {
        return Err(ApiError::unprocessable(format!(
            "to ({}) is in the future; the exchange has no candles there yet",
            to.to_rfc3339()
        )));
    }
    let dry_run = match obj.get("dry_run") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(v)) => *v,
        Some(_) => return Err(ApiError::bad_request("dry_run: must be true or false")),
    };
    Ok(Request {
        exchange,
        symbols,
        from,
        to,
        dry_run,
    })
}

pub async fn create(
    State(s): State<ApiState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let Some(b) = s.backfills.clone() else {
        return Err(forbidden("backfills are not available in this process"));
    };
    authorize(&b, &headers)?;
    let req = parse_body(&body, &b)?;
    let backfiller = Arc::clone(&b.backfillers[&req.exchange]);
    // A place in the exchange's queue first: past it, nothing is recorded.
    let queue = &b.queues[&req.exchange];
    let Ok(place) = queue.try_reserve() else {
        return Err(ApiError::too_many_requests(format!(
            "{} already has {} backfill jobs waiting (the most this service queues per exchange; one runs at a time): retry once one has finished (GET /v1/backfills)",
            req.exchange, b.depth
        )));
    };
    let spec = JobSpec {
        requested_by: "api".into(),
        symbols: req.symbols.clone(),
        from: req.from,
        to: req.to,
        dry_run: req.dry_run,
    };
    let id = backfiller.create_job(&spec).await.map_err(|e| match e {
        crate::backfill::BackfillError::Database(e) => ApiError::from(e),
        other => ApiError::unprocessable(other.to_string()),
    })?;
    info!(job = id, exchange = %req.exchange, symbols = req.symbols.len(), from = %req.from, to = %req.to, dry_run = req.dry_run, "Backfill requested over the API");
    place.send((id, spec));
    let href = format!("/v1/backfills/{id}");
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_str(&href) {
        h.insert(header::LOCATION, v);
    }
    Ok((
        StatusCode::ACCEPTED,
        h,
        Json(json!({
            "id": id,
            "status": "queued",
            "exchange": req.exchange.as_str(),
            "symbols": req.symbols,
            "from": req.from.to_rfc3339(),
            "to": req.to.to_rfc3339(),
            "dry_run": req.dry_run,
            "href": href,
        })),
    )
        .into_response())
}

const JOB_COLUMNS: &str =
    "id, requested_by, exchange, symbols, range_from, range_to, dry_run, status,
    gap_minutes, pages_total, pages_done, requests, rate_limited, candles_inserted, empty_confirmed,
    unrecoverable, still_missing, error, created_at, started_at, finished_at";

fn job_json(r: &sqlx::postgres::PgRow) -> Value {
    let ts = |name: &str| {
        r.get::<Option<DateTime<Utc>>, _>(name)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
    };
    let mut m = Map::new();
    m.insert("id".into(), json!(r.get::<i64, _>("id")));
    m.insert(
        "requested_by".into(),
        json!(r.get::<String, _>("requested_by")),
    );
    m.insert("exchange".into(), json!(r.get::<String, _>("exchange")));
    m.insert("symbols".into(), json!(r.get::<Vec<String>, _>("symbols")));
    m.insert("from".into(), json!(ts("range_from")));
    m.insert("to".into(), json!(ts("range_to")));
    m.insert("dry_run".into(), json!(r.get::<bool, _>("dry_run")));
    m.insert("status".into(), json!(r.get::<String, _>("status")));
    for n in [
        "gap_minutes",
        "candles_inserted",
        "empty_confirmed",
        "unrecoverable",
        "still_missing",
    ] {
        m.insert(n.into(), json!(r.get::<i64, _>(n)));
    }
    for n in ["pages_total", "pages_done", "requests", "rate_limited"] {
        m.insert(n.into(), json!(r.get::<i32, _>(n)));
    }
    m.insert("error".into(), json!(r.get::<Option<String>, _>("error")));
    for n in ["created_at", "started_at", "finished_at"] {
        m.insert(n.into(), json!(ts(n)));
    }
    Value::Object(m)
}

pub async fn get_one(
    State(s): State<ApiState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let id: i64 = id.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
        ApiError::bad_request(format!("id: `{id}` is not a job id (a positive integer)"))
    })?;
    let row = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM ops.backfill_jobs WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&s.pool)
    .await?;
    match row {
        Some(r) => Ok(Json(job_json(&r)).into_response()),
        None => Err(ApiError::not_found(format!("no backfill job {id}"))),
    }
}

pub async fn list(State(s): State<ApiState>) -> Result<Response, ApiError> {
    let rows = sqlx::query(&format!(
        "SELECT {JOB_COLUMNS} FROM ops.backfill_jobs ORDER BY created_at DESC, id DESC LIMIT 50"
    ))
    .fetch_all(&s.pool)
    .await?;
    let jobs: Vec<Value> = rows.iter().map(job_json).collect();
    Ok(Json(json!({"jobs": jobs})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service() -> Backfills {
        Backfills::new(
            Some("k".into()),
            BTreeMap::new(),
            BTreeMap::from([(
                ExchangeId::Binance,
                vec!["BTCUSDT".to_owned(), "ETHUSDT".to_owned()],
            )]),
            CancellationToken::new(),
            8,
            &tokio_util::task::TaskTracker::new(),
        )
    }

    fn rejected(body: &str, status: u16, words: &[&str]) {
        let e = parse_body(body.as_bytes(), &service()).expect_err(body);
        assert_eq!(e.status.as_u16(), status, "{body}: {}", e.detail);
        for w in words {
            assert!(e.detail.contains(w), "{body}: `{w}` in {}", e.detail);
        }
    }

    #[test]
    fn bodies_are_checked_field_by_field() {
        let day = r#""from":"2023-01-21","to":"2023-01-22""#;
        let ok = parse_body(
            format!(r#"{{"exchange":"binance","symbols":["ethusdt","BTCUSDT","ETHUSDT"],{day},"dry_run":true}}"#).as_bytes(),
            &service(),
        )
        .unwrap();
        assert_eq!(ok.symbols, ["BTCUSDT", "ETHUSDT"]);
        assert!(ok.dry_run);
        let all = parse_body(
            format!(r#"{{"exchange":"binance","all":true,{day}}}"#).as_bytes(),
            &service(),
        )
        .unwrap();
        assert_eq!(all.symbols.len(), 2);

        rejected("not json", 400, &["body: not JSON"]);
        rejected("[1]", 400, &["expected a JSON object"]);
        rejected(
            &format!(r#"{{"exchange":"binance","symbol":"BTCUSDT",{day},"force":1}}"#),
            400,
            &["unknown field `force`"],
        );
        rejected(
            &format!(r#"{{"symbol":"BTCUSDT",{day}}}"#),
            400,
            &["exchange: required"],
        );
        rejected(
            &format!(r#"{{"exchange":7,"symbol":"BTCUSDT",{day}}}"#),
            400,
            &["exchange: must be a string"],
        );
        rejected(
            &format!(r#"{{"exchange":"mtgox","symbol":"BTCUSDT",{day}}}"#),
            400,
            &["unknown exchange"],
        );
        rejected(
            &format!(r#"{{"exchange":"kraken","symbol":"XBTUSD",{day}}}"#),
            404,
            &["not ingested"],
        );
        rejected(
            &format!(r#"{{"exchange":"binance",{day}}}"#),
            400,
            &["symbol: required"],
        );
        rejected(
            &format!(r#"{{"exchange":"binance","all":true,"symbol":"BTCUSDT",{day}}}"#),
            400,
            &["not both"],
        );
        rejected(
            &format!(r#"{{"exchange":"binance","symbols":"BTCUSDT",{day}}}"#),
            400,
            &["array of strings"],
        );
        rejected(
            &format!(r#"{{"exchange":"binance","symbol":"SOLUSDT",{day}}}"#),
            404,
            &["SOLUSDT", "BTCUSDT, ETHUSDT"],
        );
        rejected(
            r#"{"exchange":"binance","symbol":"BTCUSDT","to":"2023-01-22"}"#,
            400,
            &["from: required"],
        );
        rejected(
            r#"{"exchange":"binance","symbol":"BTCUSDT","from":"last week","to":"2023-01-22"}"#,
            400,
            &["from:"],
        );
        rejected(
            r#"{"exchange":"binance","symbol":"BTCUSDT","from":"2023-01-22","to":"2023-01-21"}"#,
            422,
            &["must be before"],
        );
        rejected(
            r#"{"exchange":"binance","symbol":"BTCUSDT","from":"2023-01-22","to":"2999-01-01"}"#,
            422,
            &["in the future"],
        );
        rejected(
            &format!(r#"{{"exchange":"binance","symbol":"BTCUSDT",{day},"dry_run":"yes"}}"#),
            400,
            &["dry_run:"],
        );
    }

    #[test]
    fn keys_compare_by_content_only() {
        assert!(constant_time_eq(b"s3cret-key", b"s3cret-key"));
        assert!(!constant_time_eq(b"s3cret-key", b"s3cret-kex"));
        assert!(!constant_time_eq(b"s3cret-key", b"s3cret-ke"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
