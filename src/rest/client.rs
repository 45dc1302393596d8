//! REST calls to one exchange: through its shared [`RestLimiter`], feeding
//! its [`ExchangeClock`], with the exchange's rate-limit answers honoured
//! and only what is worth retrying retried.
//!
//! - 429 (or an answer the exchange marks as a rate-limit refusal in its
//!   body, like Kraken's `EGeneral:Too many requests` under HTTP 200):
//!   every caller pauses for `Retry-After` (or a window), then the request
//!   is retried.
//! - an IP ban (Binance's 418, Bybit's 403 "access too frequent"; see
//!   [`Exchange::rest_ip_ban`]): every caller pauses for `Retry-After`, at
//!   least the exchange's ban (2 and 10 minutes), loudly, then retries.
//! - other 4xx: never retried; the error carries the exchange's message.
//! - 5xx, timeouts, connection errors: retried with capped exponential
//!   backoff, `max_attempts` in all.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::StatusCode;
use thiserror::Error;
use tokio_util::sync::CancellationToken;
use tracing::{error, warn};

use super::clock::{parse_http_date, ExchangeClock};
use super::limiter::RestLimiter;
use crate::domain::ExchangeId;
use crate::exchange::{Exchange, RestRequest};
use crate::telemetry::metrics::{ExchangeLabels, StatusLabels};
use crate::telemetry::Metrics;

/// Identifies klines to the exchange (and to the simulator's request log).
pub const USER_AGENT: &str = concat!("klines/", env!("CARGO_PKG_VERSION"));
/// Rate-limit answers tolerated for one request before giving up.
const MAX_RATE_LIMITED: u32 = 20;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, Error)]
pub enum RestError {
    #[error("{url}: HTTP {status}: {message}")]
    Rejected {
        url: String,
        status: u16,
        message: String,
    },
    #[error("{url}: gave up after {attempts} attempts: {last}")]
    Exhausted {
        url: String,
        attempts: u32,
        last: String,
    },
    #[error("{url}: still rate limited after {MAX_RATE_LIMITED} waits")]
    RateLimited { url: String },
    #[error("cancelled")]
    Cancelled,
}

/// A successful response.
#[derive(Debug, Clone)]
pub struct RestResponse {
    pub body: Bytes,
    /// The server's clock when it answered (`Date` header), if it said.
    pub date: Option<DateTime<Utc>>,
}

/// Counts of one caller's requests, for its job record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub requests: u64,
    pub rate_limited: u64,
}

/// The REST side of one exchange, shared by every caller in the process.
pub struct RestClient {
    pub exchange: Arc<dyn Exchange>,
    pub limiter: Arc<RestLimiter>,
    pub clock: Arc<ExchangeClock>,
    http: reqwest::Client,
    used_weight_header: Option<&'static str>,
    max_attempts: u32,
    metrics: Arc<Metrics>,
}

impl RestClient {
    pub fn new(
        exchange: Arc<dyn Exchange>,
        limiter: Arc<RestLimiter>,
        clock: Arc<ExchangeClock>,
        max_attempts: u32,
        metrics: Arc<Metrics>,
    ) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .timeout(REQUEST_TIMEOUT)
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        let used_weight_header = exchange.limits().rest.used_weight_header;
        Ok(RestClient {
            exchange,
            limiter,
            clock,
            http,
            used_weight_header,
            max_attempts: max_attempts.max(1),
            metrics,
        })
    }

    pub fn exchange_id(&self) -> ExchangeId {
        self.exchange.id()
    }

    fn count(&self, status: &'static str) {
        self.metrics
            .rest_requests
            .get_or_create(&StatusLabels {
                exchange: self.exchange.id().as_str(),
                status,
            })
            .inc();
    }

    /// GETs `req`; see the module docs for what is retried.
    pub async fn get(
        &self,
        req: &RestRequest,
        tally: &mut Tally,
        cancel: &CancellationToken,
    ) -> Result<RestResponse, RestError> {
        let url = req.url.to_string();
        let mut failures = 0u32;
        let mut limited = 0u32;
        loop {
            let waited = tokio::select! {
                _ = cancel.cancelled() => return Err(RestError::Cancelled),
                w = self.limiter.acquire(req.weight) => w,
            };
            if !waited.is_zero() {
                self.metrics
                    .rate_limit_wait_seconds
                    .get_or_create(&ExchangeLabels {
                        exchange: self.exchange.id().as_str(),
                    })
                    .inc_by(waited.as_secs_f64());
            }
            tally.requests += 1;
            let sent = tokio::select! {
                _ = cancel.cancelled() => return Err(RestError::Cancelled),
                r = self.http.get(req.url.clone()).send() => r,
            };
            let problem = match sent {
                Ok(resp) => {
                    let status = resp.status();
                    let headers = resp.headers().clone();
                    if let Some(used) = self
                        .used_weight_header
                        .and_then(|h| headers.get(h))
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u32>().ok())
                    {
                        self.limiter.observe_used(used);
                    }
                    let date = headers
                        .get(reqwest::header::DATE)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_http_date);
                    if let Some(d) = date {
                        self.clock.observe(d);
                    }
                    let retry_after = headers
                        .get(reqwest::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.trim().parse::<u64>().ok())
                        .map(Duration::from_secs);
                    if status.is_success() {
                        match resp.bytes().await {
                            Ok(body) if self.exchange.rest_rate_limited(&body) => {
                                // Kraken: a refusal under HTTP 200.
                                tally.rate_limited += 1;
                                limited += 1;
                                let pause = retry_after.unwrap_or_else(|| self.limiter.window());
                                self.limiter.pause(pause);
                                self.count("rate_limited");
                                warn!(exchange = %self.exchange.id(), pause_s = pause.as_secs_f64(), error = %excerpt(&String::from_utf8_lossy(&body)), "Rate limited (in the answer's body); every REST caller pauses");
                                if limited >= MAX_RATE_LIMITED {
                                    return Err(RestError::RateLimited { url });
                                }
                                continue;
                            }
                            Ok(body) => {
                                self.count("ok");
                                return Ok(RestResponse { body, date });
                            }
                            Err(e) => {
                                self.count("network");
                                format!("reading the body: {e}")
                            }
                        }
                    } else if status == StatusCode::TOO_MANY_REQUESTS
                        || self.exchange.rest_ip_ban(status.as_u16()).is_some()
                    {
                        tally.rate_limited += 1;
                        limited += 1;
                        let ban = self.exchange.rest_ip_ban(status.as_u16());
                        let pause = match (ban, retry_after) {
                            (Some(min), r) => r.unwrap_or(min).max(min),
                            (None, Some(r)) => r,
                            (None, None) => self.limiter.window(),
                        };
                        self.limiter.pause(pause);
                        if ban.is_some() {
                            self.count("banned");
                            error!(exchange = %self.exchange.id(), status = status.as_u16(), pause_s = pause.as_secs(), "The exchange banned this IP; every REST caller pauses");
                        } else {
                            self.count("rate_limited");
                            warn!(exchange = %self.exchange.id(), pause_s = pause.as_secs_f64(), "Rate limited (HTTP 429); every REST caller pauses for Retry-After");
                        }
                        if limited >= MAX_RATE_LIMITED {
                            return Err(RestError::RateLimited { url });
                        }
                        continue;
                    } else if status.is_client_error() {
                        self.count("rejected");
                        let body = resp.text().await.unwrap_or_default();
                        return Err(RestError::Rejected {
                            url,
                            status: status.as_u16(),
                            message: excerpt(&body),
                        });
                    } else {
                        self.count("server_error");
                        let body = resp.text().await.unwrap_or_default();
                        format!("HTTP {}: {}", status.as_u16(), excerpt(&body))
                    }
                }
                Err(e) => {
                    self.count("network");
                    e.to_string()
                }
            };
            failures += 1;
            if failures >= self.max_attempts {
                return Err(RestError::Exhausted {
                    url,
                    attempts: failures,
                    last: problem,
                });
            }
            let backoff = Duration::from_millis(250 * (1u64 << failures.min(7)));
            warn!(exchange = %self.exchange.id(), attempt = failures, error = %problem, backoff_ms = backoff.as_millis() as u64, "REST request failed; retrying");
            tokio::select! {
                _ = cancel.cancelled() => return Err(RestError::Cancelled),
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    }

    /// Asks the exchange for its clock, where it has an endpoint for it,
    /// and feeds the answer to [`RestClient::clock`].
    pub async fn sync_clock(
        &self,
        tally: &mut Tally,
        cancel: &CancellationToken,
    ) -> Result<Option<DateTime<Utc>>, RestError> {
        let Some(req) = self.exchange.server_time_request() else {
            return Ok(None);
        };
        let resp = self.get(&req, tally, cancel).await?;
        match self.exchange.parse_server_time(&resp.body) {
            Ok(t) => {
                self.clock.observe(t);
                Ok(Some(t))
            }
            Err(e) => {
                warn!(exchange = %self.exchange.id(), error = %e, "Unreadable server time");
                Ok(None)
            }
        }
    }
}

/// The first 300 characters of an error body, on one line.
fn excerpt(body: &str) -> String {
    let one_line: String = body
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    if one_line.trim().is_empty() {
        "(empty body)".into()
    } else {
        one_line.trim().to_owned()
    }
}
