//! The status page at `/`: what an operator opens first. Per exchange the
//! connection state, message rate and candle lag of the last minute; a
//! completeness heatmap of every configured pair over the exchange's last
//! 24 hours (colour by ratio, the split by source on hover); the recent
//! backfill jobs. Server-rendered HTML with a few lines of inline JS (hover
//! detail, refresh); no external resources, so it works on a VM without
//! egress.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use sqlx::Row;
use tokio_util::sync::CancellationToken;

use super::{ApiError, ApiState};
use crate::db::leader::Leader;
use crate::domain::{ExchangeId, Pair};
use crate::rest::clock::ExchangeClock;
use crate::telemetry::metrics::{sum_in, ExchangeLabels};
use crate::telemetry::Metrics;

/// What the status page shows beyond the metrics and the database.
pub struct StatusInfo {
    /// This process (`klines <host> pid <pid> shard i/N`).
    pub instance: String,
    /// Every configured pair (all shards): the heatmap's rows.
    pub pairs: Vec<Pair>,
    /// The exchanges' clocks: the heatmap ends at their latest hour.
    pub clocks: Vec<Arc<ExchangeClock>>,
    pub leader: Leader,
    rates: Mutex<VecDeque<Sample>>,
}

impl Default for StatusInfo {
    fn default() -> Self {
        StatusInfo::new("klines".into(), Vec::new(), Vec::new(), Leader::always())
    }
}

/// Cumulative histogram buckets: `(upper bound, count)`.
type Buckets = Vec<(f64, f64)>;

/// Counters of one moment, for rates over the last minute.
#[derive(Clone)]
struct Sample {
    at: Instant,
    /// Per exchange: messages, and the lag histogram's cumulative buckets.
    exchanges: BTreeMap<&'static str, (f64, Buckets)>,
}

const SAMPLE_EVERY: Duration = Duration::from_secs(5);
const SAMPLES: usize = 13; // one minute

impl StatusInfo {
    pub fn new(
        instance: String,
        pairs: Vec<Pair>,
        clocks: Vec<Arc<ExchangeClock>>,
        leader: Leader,
    ) -> Self {
        StatusInfo {
            instance,
            pairs,
            clocks,
            leader,
            rates: Mutex::new(VecDeque::new()),
        }
    }

    /// The counters of `text` (one encoding of `metrics`).
    fn sample(&self, text: &str, metrics: &Metrics, exchanges: &[ExchangeId]) -> Sample {
        Sample {
            at: Instant::now(),
            exchanges: exchanges
                .iter()
                .map(|e| {
                    let messages = metrics
                        .ws_messages
                        .get_or_create(&ExchangeLabels {
                            exchange: e.as_str(),
                        })
                        .get() as f64;
                    let filter = format!("exchange=\"{}\"", e.as_str());
                    let buckets =
                        histogram_buckets(text, "klines_candle_lag_seconds_bucket", &filter);
                    (e.as_str(), (messages, buckets))
                })
                .collect(),
        }
    }

    fn record(&self, sample: Sample) {
        let mut q = self.rates.lock().expect("status samples poisoned");
        q.push_back(sample);
        while q.len() > SAMPLES {
            q.pop_front();
        }
    }

    /// The oldest sample of the last minute, if any.
    fn oldest(&self) -> Option<Sample> {
        self.rates
            .lock()
            .expect("status samples poisoned")
            .front()
            .cloned()
    }
}

/// Samples the counters every few seconds until `stop`.
pub async fn sampler(state: ApiState, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SAMPLE_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let text = state.metrics.encode();
        let s = state.status.sample(&text, &state.metrics, &state.exchanges);
        state.status.record(s);
    }
}

/// The cumulative buckets `(le, count)` of a histogram's series matching
/// `filter`, from the text exposition.
fn histogram_buckets(text: &str, name: &str, filter: &str) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64)> = text
        .lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{') && l.contains(filter))
        .filter_map(|l| {
            let le = l.split("le=\"").nth(1)?.split('"').next()?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            let count = l.rsplit_once(' ')?.1.parse().ok()?;
            Some((le, count))
        })
        .collect();
    out.sort_by(|a, b| a.0.total_cmp(&b.0));
    out
}

/// The `q` quantile's bucket bound of the difference `now - before` of two
/// cumulative histograms (what arrived between them); `None` when nothing
/// did.
fn quantile(now: &[(f64, f64)], before: &[(f64, f64)], q: f64) -> Option<f64> {
    let count = |b: &[(f64, f64)], le: f64| {
        b.iter()
            .find(|(l, _)| *l == le)
            .map(|(_, c)| *c)
            .unwrap_or(0.0)
    };
    let delta: Vec<(f64, f64)> = now
        .iter()
        .map(|(le, c)| (*le, c - count(before, *le)))
        .collect();
    let total = delta.last()?.1;
    if total <= 0.0 {
        return None;
    }
    delta
        .iter()
        .find(|(_, c)| *c >= q * total)
        .map(|(le, _)| *le)
}

fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn seconds(v: Option<f64>) -> String {
    match v {
        None => "–".into(),
        Some(v) if v.is_infinite() => "&gt; 160 s".into(),
        Some(v) if v < 1.0 => format!("≤ {:.0} ms", v * 1000.0),
        Some(v) => format!("≤ {v:.1} s"),
    }
}

/// A pair's latest archive audit, for its column.
#[derive(sqlx::FromRow)]
struct Audit {
    exchange: String,
    symbol: String,
    day: chrono::NaiveDate,
    verdict: String,
    differing: i32,
    missing_from_silver: i32,
    missing_from_file: i32,
}

/// The colour of a completeness ratio: red (0) through amber to green (1).
fn colour(ratio: f64) -> String {
    let hue = (ratio.clamp(0.0, 1.0) * 120.0).round();
    let light = if ratio >= 1.0 { 38 } else { 45 };
    format!("hsl({hue:.0},70%,{light}%)")
}

struct Hour {
    expected: i32,
    present: i32,
    ws: i32,
    rest: i32,
    lake: i32,
    filled: i32,
    missing: i32,
    unrecoverable: i32,
    ratio: f64,
}

pub async fn page(State(s): State<ApiState>) -> Result<Response, ApiError> {
    // The exchanges' time; before any has spoken (or in a process without
    // feeds), the latest hour silver has.
    let now = match crate::rest::clock::latest_heard(&s.status.clocks) {
        Some(t) => t,
        None => sqlx::query_scalar::<_, Option<DateTime<Utc>>>(
            "SELECT max(hour_start) FROM silver.completeness_hourly WHERE hour_start <= now()",
        )
        .fetch_one(&s.pool)
        .await?
        .unwrap_or_else(Utc::now),
    };
    let end_hour = now.timestamp().div_euclid(3600) * 3600 + 3600;
    let end = DateTime::from_timestamp(end_hour, 0).unwrap_or(now);
    let start = end - chrono::Duration::hours(24);
    let rows = sqlx::query(
        "SELECT exchange, symbol, hour_start, expected, present, from_ws, from_rest, from_lake,
                filled, missing, unrecoverable, ratio::float8 AS ratio
           FROM silver.completeness_hourly
          WHERE hour_start >= $1 AND hour_start < $2",
    )
    .bind(start)
    .bind(end)
    .fetch_all(&s.pool)
    .await?;
    let mut grid: HashMap<(String, String, i64), Hour> = HashMap::new();
    let mut seen_pairs: Vec<(String, String)> = Vec::new();
    for r in &rows {
        let key = (
            r.get::<String, _>("exchange"),
            r.get::<String, _>("symbol"),
            r.get::<DateTime<Utc>, _>("hour_start").timestamp(),
        );
        seen_pairs.push((key.0.clone(), key.1.clone()));
        grid.insert(
            key,
            Hour {
                expected: r.get("expected"),
                present: r.get("present"),
                ws: r.get("from_ws"),
                rest: r.get("from_rest"),
                lake: r.get("from_lake"),
                filled: r.get("filled"),
                missing: r.get("missing"),
                unrecoverable: r.get("unrecoverable"),
                ratio: r.get("ratio"),
            },
        );
    }
    // The configured pairs, then any other pair silver has in the window.
    let mut pairs: Vec<(String, String)> = s
        .status
        .pairs
        .iter()
        .map(|p| (p.exchange.as_str().to_owned(), p.symbol.clone()))
        .collect();
    seen_pairs.sort();
    seen_pairs.dedup();
    for p in seen_pairs {
        if !pairs.contains(&p) {
            pairs.push(p);
        }
    }

    let jobs = sqlx::query(
        "SELECT id, requested_by, exchange, symbols, range_from, range_to, status, gap_minutes,
                candles_inserted, empty_confirmed, still_missing, created_at, finished_at
           FROM ops.backfill_jobs ORDER BY created_at DESC, id DESC LIMIT 10",
    )
    .fetch_all(&s.pool)
    .await?;

    // Pairs whose backfill keeps failing: each backs off on its own.
    let failing = sqlx::query(
        "SELECT exchange, symbol, failures, last_error, last_error_at, next_try_at
           FROM ops.backfill_pairs WHERE failures > 0
          ORDER BY last_error_at DESC NULLS LAST, exchange, symbol LIMIT 50",
    )
    .fetch_all(&s.pool)
    .await?;

    let mut html = String::with_capacity(64 * 1024);
    let _ = write!(
        html,
        r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>klines status</title>
<style>
body{{font:14px/1.4 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:1.5rem;color:#1d2330;background:#fafbfc}}
h1{{font-size:1.4rem;margin:0 0 .2rem}} h2{{font-size:1.05rem;margin:1.6rem 0 .5rem}}
.meta{{color:#5a6272}} table{{border-collapse:collapse}}
table.list td,table.list th{{padding:.25rem .7rem;border-bottom:1px solid #e3e6ea;text-align:left}}
table.list th{{font-weight:600;color:#5a6272}} td.num{{text-align:right;font-variant-numeric:tabular-nums}}
.up{{color:#17813c;font-weight:600}} .down{{color:#c0262d;font-weight:600}}
table.heat td{{width:22px;height:18px;padding:0;border:1px solid #fafbfc}}
table.heat td.none{{background:#e3e6ea}} table.heat td.unlisted{{background:repeating-linear-gradient(45deg,#eef0f3 0 3px,#dfe2e6 3px 6px)}} table.heat th{{font-weight:500;padding:0 .5rem 0 0;text-align:right;white-space:nowrap}}
table.heat thead th{{font-size:11px;color:#5a6272;text-align:center;padding:0}}
#detail{{min-height:1.4rem;margin:.4rem 0;color:#1d2330}}
.legend span{{display:inline-block;width:22px;height:12px;vertical-align:middle;margin:0 2px}}
footer{{margin-top:2rem;color:#5a6272}} a{{color:#2457c5}}
</style></head><body>
<h1>klines</h1>
<div class="meta">{instance} · {role} · exchange time {now} · page at {wall}</div>
"#,
        instance = esc(&s.status.instance),
        role = if s.status.leader.is_leader() {
            "scheduler leader"
        } else {
            "follower"
        },
        now = now.format("%Y-%m-%d %H:%M:%S UTC"),
        wall = Utc::now().format("%H:%M:%S UTC"),
    );

    // Exchanges.
    let text = s.metrics.encode();
    let current = s.status.sample(&text, &s.metrics, &s.exchanges);
    let before = s.status.oldest();
    html.push_str(
        "<h2>Exchanges</h2>\n<table class=\"list\" id=\"exchanges\"><tr><th>exchange</th><th>state</th><th>connections</th>\
         <th>messages/s (1 min)</th><th>reconnects</th><th>decode errors</th><th>lag p50 (1 min)</th><th>lag p99 (1 min)</th>\
         <th title=\"minutes of the sampled pairs equal between the WebSocket and REST, last 24 hours (ops.source_check)\">ws = rest (24 h)</th></tr>\n",
    );
    let agreement: std::collections::BTreeMap<String, (i64, i64)> =
        sqlx::query_as::<_, (String, i64, i64)>(
            "SELECT exchange, sum(equal)::bigint, sum(compared)::bigint FROM ops.source_check
          WHERE hour_start >= $1 GROUP BY exchange",
        )
        .bind(now - chrono::Duration::hours(24))
        .fetch_all(&s.pool)
        .await?
        .into_iter()
        .map(|(e, equal, compared)| (e, (equal, compared)))
        .collect();
    for e in &s.exchanges {
        let name = e.as_str();
        let open = s
            .metrics
            .connections
            .get_or_create(&ExchangeLabels { exchange: name })
            .get();
        let (msgs, buckets) = current.exchanges.get(name).cloned().unwrap_or_default();
        let (rate, p50, p99) = match before.as_ref().and_then(|b| {
            let (m0, b0) = b.exchanges.get(name)?;
            let secs = current.at.duration_since(b.at).as_secs_f64();
            Some((secs, *m0, b0.clone()))
        }) {
            Some((secs, m0, b0)) if secs >= 1.0 => (
                format!("{:.1}", (msgs - m0) / secs),
                quantile(&buckets, &b0, 0.5),
                quantile(&buckets, &b0, 0.99),
            ),
            _ => ("–".into(), None, None),
        };
        let filter = format!("exchange=\"{name}\"");
        let reconnects = sum_in(&text, "klines_ws_reconnects_total", &[&filter]);
        let decode = sum_in(&text, "klines_decode_errors_total", &[&filter]);
        let state = if open > 0 {
            "<span class=\"up\">connected</span>"
        } else {
            "<span class=\"down\">reconnecting</span>"
        };
        let _ = writeln!(
            html,
            "<tr data-exchange=\"{name}\"><td>{name}</td><td>{state}</td><td class=\"num\">{open}</td>\
             <td class=\"num\">{rate}</td><td class=\"num\">{reconnects}</td><td class=\"num\">{decode}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num agree\">{}</td></tr>",
            seconds(p50),
            seconds(p99),
            match agreement.get(name) {
                Some((equal, compared)) if *compared > 0 => format!("{equal} of {compared}"),
                _ => "–".to_owned(),
            },
        );
    }
    html.push_str("</table>\n");

    // Heatmap.
    let _ = write!(
        html,
        "<h2>Completeness, last 24 exchange hours</h2>\n\
         <div class=\"legend\">ratio <span style=\"background:{}\"></span>0 <span style=\"background:{}\"></span>0.5 \
         <span style=\"background:{}\"></span>0.99 <span style=\"background:{}\"></span>1 \
         <span style=\"background:#e3e6ea\"></span>no row yet \
         <span style=\"background:repeating-linear-gradient(45deg,#eef0f3 0 3px,#dfe2e6 3px 6px)\"></span>not listed</div>\n\
         <div id=\"detail\">Hover a cell for its minutes by source.</div>\n\
         <table class=\"heat\" id=\"heatmap\"><thead><tr><th></th>",
        colour(0.0),
        colour(0.5),
        colour(0.99),
        colour(1.0),
    );
    for h in 0..24 {
        let t = start + chrono::Duration::hours(h);
        let label = t.format("%H").to_string();
        let _ = write!(
            html,
            "<th title=\"{}\">{label}</th>",
            t.format("%Y-%m-%d %H:00")
        );
    }
    html.push_str("<th title=\"the latest day compared with the exchange's published files (ops.archive_audit)\">archive</th></tr></thead><tbody>\n");
    // The latest archive audit of each pair.
    let audits: std::collections::BTreeMap<(String, String), Audit> = sqlx::query_as::<_, Audit>(
        "SELECT DISTINCT ON (exchange, symbol) exchange, symbol, day, verdict, differing,
                missing_from_silver, missing_from_file
           FROM ops.archive_audit ORDER BY exchange, symbol, day DESC",
    )
    .fetch_all(&s.pool)
    .await?
    .into_iter()
    .map(|a| ((a.exchange.clone(), a.symbol.clone()), a))
    .collect();
    for (exchange, symbol) in &pairs {
        let _ = write!(
            html,
            "<tr data-pair=\"{e}:{s}\"><th>{e} {s}</th>",
            e = esc(exchange),
            s = esc(symbol)
        );
        for h in 0..24 {
            let t = start + chrono::Duration::hours(h);
            let hour = t.format("%Y-%m-%d %H:00").to_string();
            match grid.get(&(exchange.clone(), symbol.clone(), t.timestamp())) {
                Some(c) if c.expected == 0 => {
                    let _ = write!(
                        html,
                        "<td class=\"unlisted\" title=\"{} {} {hour}: before its listing or first trade (no minute expected)\"></td>",
                        esc(exchange),
                        esc(symbol)
                    );
                }
                Some(c) => {
                    let _ = write!(
                        html,
                        "<td style=\"background:{bg}\" data-ratio=\"{r:.4}\" title=\"{e} {s} {hour}: {p}/{x} present · ws {ws} · rest {rest} · lake {lake} · filled {filled} · missing {missing} · unrecoverable {unrec}\" \
                         data-hour=\"{hour}\" data-present=\"{p}\" data-expected=\"{x}\" data-ws=\"{ws}\" data-rest=\"{rest}\" data-lake=\"{lake}\" \
                         data-filled=\"{filled}\" data-missing=\"{missing}\" data-unrecoverable=\"{unrec}\"></td>",
                        bg = colour(c.ratio),
                        r = c.ratio,
                        e = esc(exchange),
                        s = esc(symbol),
                        p = c.present,
                        x = c.expected,
                        ws = c.ws,
                        rest = c.rest,
                        lake = c.lake,
                        filled = c.filled,
                        missing = c.missing,
                        unrec = c.unrecoverable,
                    );
                }
                None => {
                    let _ = write!(
                        html,
                        "<td class=\"none\" title=\"{} {} {hour}: no completeness row yet\"></td>",
                        esc(exchange),
                        esc(symbol)
                    );
                }
            }
        }
        match audits.get(&(exchange.clone(), symbol.clone())) {
            Some(a) => {
                let _ = write!(
                    html,
                    "<td class=\"audit\" data-verdict=\"{v}\" title=\"{e} {s} {day}: {v} · differing {d} · missing from silver {ns} · missing from the file {nf}\">{v}</td>",
                    v = esc(&a.verdict),
                    e = esc(exchange),
                    s = esc(symbol),
                    day = a.day,
                    d = a.differing,
                    ns = a.missing_from_silver,
                    nf = a.missing_from_file,
                );
            }
            None => html
                .push_str("<td class=\"audit\" title=\"not compared with the archive yet\">–</td>"),
        }
        html.push_str("</tr>\n");
    }
    if pairs.is_empty() {
        html.push_str("<tr><td colspan=\"26\">No pairs configured or merged yet.</td></tr>\n");
    }
    html.push_str("</tbody></table>\n");

    // Backfills.
    html.push_str(
        "<h2>Recent backfill jobs</h2>\n<table class=\"list\" id=\"backfills\"><tr><th>id</th><th>by</th><th>exchange</th>\
         <th>pairs</th><th>range</th><th>status</th><th>gap min</th><th>inserted</th><th>confirmed empty</th>\
         <th>still missing</th><th>created</th></tr>\n",
    );
    for j in &jobs {
        let symbols: Vec<String> = j.get("symbols");
        let pairs_text = if symbols.len() <= 3 {
            symbols.join(", ")
        } else {
            format!("{} pairs", symbols.len())
        };
        let ts = |n: &str| {
            j.get::<DateTime<Utc>, _>(n)
                .format("%Y-%m-%d %H:%M")
                .to_string()
        };
        let _ = writeln!(
            html,
            "<tr><td class=\"num\">{id}</td><td>{by}</td><td>{ex}</td><td>{pairs}</td><td>{from} → {to}</td>\
             <td>{status}</td><td class=\"num\">{gap}</td><td class=\"num\">{ins}</td><td class=\"num\">{empty}</td>\
             <td class=\"num\">{left}</td><td>{created}</td></tr>",
            id = j.get::<i64, _>("id"),
            by = esc(&j.get::<String, _>("requested_by")),
            ex = esc(&j.get::<String, _>("exchange")),
            pairs = esc(&pairs_text),
            from = ts("range_from"),
            to = ts("range_to"),
            status = esc(&j.get::<String, _>("status")),
            gap = j.get::<i64, _>("gap_minutes"),
            ins = j.get::<i64, _>("candles_inserted"),
            empty = j.get::<i64, _>("empty_confirmed"),
            left = j.get::<i64, _>("still_missing"),
            created = ts("created_at"),
        );
    }
    if jobs.is_empty() {
        html.push_str("<tr><td colspan=\"11\">No backfill jobs yet.</td></tr>\n");
    }
    html.push_str("</table>\n");

    if !failing.is_empty() {
        html.push_str(
            "<h2>Pairs whose backfill is failing</h2>\n<table class=\"list\" id=\"failing\"><tr><th>exchange</th>\
             <th>pair</th><th>failures in a row</th><th>last error</th><th>at</th><th>next try (exchange time)</th></tr>\n",
        );
        for f in &failing {
            let ts = |n: &str| {
                f.get::<Option<DateTime<Utc>>, _>(n)
                    .map(|t| t.format("%Y-%m-%d %H:%M").to_string())
                    .unwrap_or_default()
            };
            let _ = writeln!(
                html,
                "<tr><td>{ex}</td><td>{sym}</td><td class=\"num\">{n}</td><td>{err}</td><td>{at}</td><td>{next}</td></tr>",
                ex = esc(&f.get::<String, _>("exchange")),
                sym = esc(&f.get::<String, _>("symbol")),
                n = f.get::<i32, _>("failures"),
                err = esc(f.get::<Option<String>, _>("last_error").as_deref().unwrap_or("")),
                at = ts("last_error_at"),
                next = ts("next_try_at"),
            );
        }
        html.push_str("</table>\n");
    }
    html.push_str(
        r#"<footer><a href="/metrics">/metrics</a> · <a href="/readyz">/readyz</a> · <a href="/v1/symbols">/v1/symbols</a> · <a href="/v1/openapi.json">/v1/openapi.json</a> · refreshes every 30 s</footer>
<script>
(function () {
  var detail = document.getElementById('detail');
  document.querySelectorAll('#heatmap td[data-ratio]').forEach(function (td) {
    td.addEventListener('mouseenter', function () {
      var d = td.dataset, pair = td.parentNode.dataset.pair.replace(':', ' ');
      detail.textContent = pair + ' ' + d.hour + ': ' + d.present + '/' + d.expected +
        ' present (ratio ' + Number(d.ratio).toFixed(3) + ') = ws ' + d.ws + ' + rest ' + d.rest +
        ' + lake ' + d.lake + ' + filled ' + d.filled + '; missing ' + d.missing +
        ', unrecoverable ' + d.unrecoverable;
    });
  });
  document.body.dataset.cells = document.querySelectorAll('#heatmap td[data-ratio]').length;
  setTimeout(function () { location.reload(); }, 30000);
})();
</script>
</body></html>
"#,
    );
    let mut resp = html.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(resp)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_what_arrived_between_two_samples() {
        let before = vec![(0.01, 0.0), (0.1, 10.0), (1.0, 10.0), (f64::INFINITY, 10.0)];
        let now = vec![
            (0.01, 0.0),
            (0.1, 10.0),
            (1.0, 108.0),
            (f64::INFINITY, 110.0),
        ];
        // 100 new: 98 ≤ 1 s, 2 above.
        assert_eq!(quantile(&now, &before, 0.5), Some(1.0));
        assert_eq!(quantile(&now, &before, 0.99), Some(f64::INFINITY));
        assert_eq!(quantile(&before, &before, 0.5), None);
    }

    #[test]
    fn buckets_are_read_from_the_exposition() {
        let m = Metrics::new();
        let h = m.candle_lag.get_or_create(&ExchangeLabels {
            exchange: "binance",
        });
        h.observe(0.3);
        h.observe(0.3);
        h.observe(50.0);
        let b = histogram_buckets(
            &m.encode(),
            "klines_candle_lag_seconds_bucket",
            "exchange=\"binance\"",
        );
        assert_eq!(b.len(), 16, "{b:?}");
        assert_eq!(b.last(), Some(&(f64::INFINITY, 3.0)));
        assert_eq!(quantile(&b, &[], 0.5), Some(0.32));
    }

    #[test]
    fn html_is_escaped_and_colours_run_red_to_green() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
        assert_eq!(colour(0.0), "hsl(0,70%,45%)");
        assert_eq!(colour(1.0), "hsl(120,70%,38%)");
    }
}
