//! OKX v5 spot: `candle1m` on the **business** WebSocket
//! (`/ws/v5/business`; the public URL refuses candle channels),
//! `/api/v5/market/history-candles` and `/api/v5/public/instruments` over
//! REST. Protocol facts: `docs/exchanges.md` §4.
//!
//! Every value of a candle row is a string, the closed flag included
//! (`confirm` `"0"`/`"1"`, compared as text). Rows of the legacy 7-element
//! shape (no `volCcyQuote`, no `confirm`) are refused rather than guessed
//! closed or open.

use std::ops::Range;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use url::Url;

use super::{
    dash_pair, envelope_payload, join_path, json_error, parse_non_negative, ws_endpoint,
    ConnectionLimits, Control, DecodeError, DecodeState, Decoded, Exchange, ExchangeError,
    Instrument, Limits, RestLimits, RestRequest,
};
use crate::domain::{ms_to_utc, Candle, CandleEvent, ExchangeId, Minute, Pair, Source};

/// No documented stream limit per connection; the `args` of one request
/// must stay under 64 KB. 300 pairs keep a connection's traffic moderate.
const MAX_PAIRS_PER_CONNECTION: usize = 300;
/// `{"channel":"candle1m","instId":"BTC-USDT"}` is about 45 bytes: 100 per
/// request stays far below 64 KB.
const SUBSCRIBE_BATCH: usize = 100;
/// 480 subscribe requests per hour per connection; a slot sends at most
/// three, paced.
const CONTROL_MESSAGES_PER_SECOND: u32 = 3;
/// 3 connection requests per second per IP.
const MAX_CONNECTS_PER_WINDOW: u32 = 3;
const CONNECT_WINDOW: Duration = Duration::from_secs(1);
/// The server cuts a connection idle for 30 s: ping (plain text) well before.
const PING_EVERY: Duration = Duration::from_secs(20);
/// `history-candles`: 100 rows per call, 20 calls per 2 s per IP.
const HISTORY_PAGE_LIMIT: usize = 100;
const HISTORY_RATE: u32 = 20;
const HISTORY_WINDOW: Duration = Duration::from_secs(2);

/// What the exchange allows one client (see [`Limits`]).
const LIMITS: Limits = Limits {
    connection: ConnectionLimits {
        max_pairs_per_connection: MAX_PAIRS_PER_CONNECTION,
        control_messages_per_second: CONTROL_MESSAGES_PER_SECOND,
        max_connects_per_window: MAX_CONNECTS_PER_WINDOW,
        connect_window: CONNECT_WINDOW,
        max_connection_lifetime: None,
        app_ping: Some((PING_EVERY, "ping")),
    },
    rest: RestLimits {
        weight_limit: HISTORY_RATE,
        window: HISTORY_WINDOW,
        used_weight_header: None,
        history: None,
    },
    rest_page: HISTORY_PAGE_LIMIT,
};

/// OKX (or a server speaking its v5 protocol, such as the simulator).
#[derive(Debug, Clone)]
pub struct Okx {
    ws_url: Url,
    rest_url: Url,
}

impl Okx {
    pub fn new(ws_url: Url, rest_url: Url) -> Self {
        Okx { ws_url, rest_url }
    }
}

/// `{"arg":{"channel":"candle1m","instId":"BTC-USDT"},"data":[[…]]}`.
#[derive(Deserialize)]
struct Push<'a> {
    #[serde(borrow)]
    arg: Arg<'a>,
    #[serde(borrow)]
    data: Vec<Vec<&'a str>>,
}

#[derive(Deserialize)]
struct Arg<'a> {
    channel: &'a str,
    #[serde(rename = "instId")]
    inst_id: &'a str,
}

/// A candle row, `[ts,o,h,l,c,vol,volCcy,volCcyQuote,confirm]`, read by
/// position: `(candle, confirmed)`.
fn row_candle(inst_id: &str, row: &[&str]) -> Result<(Candle, bool), DecodeError> {
    if row.len() < 9 {
        return Err(DecodeError::Shape(format!(
            "candle row of {} elements; the current API sends 9 (`{}`), a row without `confirm` is the legacy shape",
            row.len(),
            "ts,o,h,l,c,vol,volCcy,volCcyQuote,confirm"
        )));
    }
    let ts: i64 = row[0].parse().map_err(|_| DecodeError::Field {
        field: "data[0] ts",
        reason: format!("`{}` is not a time in ms", row[0]),
    })?;
    let minute = Minute::from_epoch_ms(ts).ok_or_else(|| DecodeError::Field {
        field: "data[0] ts",
        reason: format!("{ts} is not on a minute boundary"),
    })?;
    let confirmed = match row[8] {
        "1" => true,
        "0" => false,
        other => {
            return Err(DecodeError::Field {
                field: "data[8] confirm",
                reason: format!("`{other}` is neither \"0\" nor \"1\""),
            })
        }
    };
    Ok((
        Candle {
            exchange: ExchangeId::Okx,
            symbol: inst_id.to_owned(),
            interval_seconds: crate::domain::ONE_MINUTE_SECONDS,
            interval_start: minute.start(),
            open: parse_non_negative("data[1] o", row[1])?,
            high: parse_non_negative("data[2] h", row[2])?,
            low: parse_non_negative("data[3] l", row[3])?,
            close: parse_non_negative("data[4] c", row[4])?,
            // Spot: `vol` is in base, `volCcyQuote` in quote.
            volume: parse_non_negative("data[5] vol", row[5])?,
            quote_volume: Some(parse_non_negative("data[7] volCcyQuote", row[7])?),
            trade_count: None,
            vwap: None,
        },
        confirmed,
    ))
}

/// The envelope of every REST answer: `code` is a string, `"0"` when fine.
#[derive(Deserialize)]
struct RestEnvelope<'a> {
    code: String,
    #[serde(default)]
    msg: String,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

fn rest_data<'a, T: Deserialize<'a>>(body: &'a [u8]) -> Result<T, DecodeError> {
    let env: RestEnvelope<'a> = serde_json::from_slice(body).map_err(json_error)?;
    if env.code != "0" {
        return Err(DecodeError::Unsupported(format!(
            "OKX error {}: {}",
            env.code, env.msg
        )));
    }
    envelope_payload(env.data, "data")
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireInstrument {
    inst_id: String,
    base_ccy: String,
    quote_ccy: String,
    state: String,
    #[serde(default)]
    list_time: Option<String>,
}

/// A 24 h ticker: for spot, `volCcy24h` is in the quote currency.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct WireTicker<'a> {
    inst_id: String,
    vol_ccy24h: &'a str,
}

impl Exchange for Okx {
    fn limits(&self) -> &'static Limits {
        &LIMITS
    }

    fn id(&self) -> ExchangeId {
        ExchangeId::Okx
    }

    fn normalize_symbol(&self, symbol: &str) -> Result<String, ExchangeError> {
        dash_pair(symbol, "OKX spot instruments, e.g. BTC-USDT,").map(|(upper, _)| upper)
    }

    fn connect_url(&self, _pairs: &[Pair]) -> Url {
        // Candles live on the business endpoint only; a base configured
        // with OKX's own paths (public or business) is accepted.
        ws_endpoint(
            &self.ws_url,
            &["/ws/v5/business", "/ws/v5/public"],
            "ws/v5/business",
        )
    }

    fn subscribe_messages(&self, pairs: &[Pair]) -> Vec<String> {
        pairs
            .chunks(SUBSCRIBE_BATCH)
            .enumerate()
            .map(|(i, chunk)| {
                let args: Vec<Value> = chunk
                    .iter()
                    .map(|p| serde_json::json!({"channel": "candle1m", "instId": p.symbol}))
                    .collect();
                serde_json::json!({"id": format!("sub{}", i + 1), "op": "subscribe", "args": args})
                    .to_string()
            })
            .collect()
    }

    fn decode(
        &self,
        frame: &str,
        received: DateTime<Utc>,
        _state: &mut DecodeState,
    ) -> Result<Decoded, DecodeError> {
        if frame == "pong" {
            return Ok(Decoded::Control(Control::Heartbeat));
        }
        if let Ok(push) = serde_json::from_str::<Push<'_>>(frame) {
            if push.arg.channel != "candle1m" {
                return Err(DecodeError::Unsupported(format!(
                    "channel `{}` (klines subscribes to candle1m only)",
                    push.arg.channel
                )));
            }
            let mut events = Vec::with_capacity(push.data.len());
            for row in &push.data {
                let (candle, confirmed) = row_candle(push.arg.inst_id, row)?;
                events.push(CandleEvent {
                    candle,
                    is_final: confirmed,
                    source: Source::Ws,
                    // OKX pushes carry no event time.
                    event_ts: None,
                    received_ts: received,
                });
            }
            return Ok(Decoded::Candles(events));
        }
        let value: Value = serde_json::from_str(frame).map_err(json_error)?;
        let Value::Object(obj) = &value else {
            return Err(DecodeError::Shape("frame is not a JSON object".into()));
        };
        match obj.get("event").and_then(Value::as_str) {
            Some("subscribe" | "unsubscribe") => Ok(Decoded::Control(Control::Ack)),
            Some("error") => Ok(Decoded::Control(Control::ExchangeError(format!(
                "code {}: {}",
                obj.get("code").and_then(Value::as_str).unwrap_or("?"),
                obj.get("msg").and_then(Value::as_str).unwrap_or_default()
            )))),
            // 64008: the connection closes soon for a service upgrade.
            Some("notice") => Ok(Decoded::Control(Control::ServerShutdown)),
            Some(other) => Err(DecodeError::Unsupported(format!("event `{other}`"))),
            None if obj.contains_key("arg") && obj.contains_key("data") => {
                // A push that did not fit the candle shape: say why.
                let push: Push<'_> = serde_json::from_str(frame)
                    .map_err(|e| DecodeError::Shape(format!("candle push: {e}")))?;
                Err(DecodeError::Unsupported(format!(
                    "push of channel `{}`",
                    push.arg.channel
                )))
            }
            None => Err(DecodeError::Shape(
                "object without `event` or `arg`/`data`".into(),
            )),
        }
    }

    fn rest_klines_request(&self, symbol: &str, range: Range<Minute>) -> RestRequest {
        // `history-candles` reaches back years and serves recent minutes
        // too. `after` and `before` are both exclusive: rows with
        // start - 1 ms < ts < end.
        let mut url = join_path(&self.rest_url, "api/v5/market/history-candles");
        let count = (range.end.index() - range.start.index()).clamp(1, HISTORY_PAGE_LIMIT as i64);
        url.query_pairs_mut()
            .append_pair("instId", symbol)
            .append_pair("bar", "1m")
            .append_pair("after", &range.end.epoch_ms().to_string())
            .append_pair("before", &(range.start.epoch_ms() - 1).to_string())
            .append_pair("limit", &count.to_string());
        RestRequest { url, weight: 1 }
    }

    fn parse_rest_klines(
        &self,
        symbol: &str,
        body: &[u8],
        now: DateTime<Utc>,
    ) -> Result<Vec<Candle>, DecodeError> {
        let rows: Vec<Vec<&str>> = rest_data(body)?;
        let mut candles = Vec::with_capacity(rows.len());
        for row in rows.iter().rev() {
            let (candle, confirmed) = row_candle(symbol, row)?;
            // The newest row may be the open minute (`confirm` "0").
            if !confirmed || candle.interval_end() > now {
                continue;
            }
            candles.push(candle);
        }
        Ok(candles)
    }

    fn server_time_request(&self) -> Option<RestRequest> {
        Some(RestRequest {
            url: join_path(&self.rest_url, "api/v5/public/time"),
            weight: 1,
        })
    }

    fn parse_server_time(&self, body: &[u8]) -> Result<DateTime<Utc>, DecodeError> {
        #[derive(Deserialize)]
        struct Time {
            ts: String,
        }
        let data: Vec<Time> = rest_data(body)?;
        let ts = data
            .first()
            .and_then(|t| t.ts.parse::<i64>().ok())
            .ok_or_else(|| DecodeError::Field {
                field: "data[0].ts",
                reason: "missing or not a time in ms".into(),
            })?;
        Ok(ms_to_utc(ts))
    }

    fn first_candle_request(&self, _symbol: &str) -> Option<RestRequest> {
        // REST pages backwards from the newest minute only.
        None
    }

    fn instruments_request(&self) -> RestRequest {
        let mut url = join_path(&self.rest_url, "api/v5/public/instruments");
        url.query_pairs_mut().append_pair("instType", "SPOT");
        RestRequest { url, weight: 1 }
    }

    fn parse_instruments(&self, body: &[u8]) -> Result<Vec<Instrument>, DecodeError> {
        let data: Vec<WireInstrument> = rest_data(body)?;
        Ok(data
            .into_iter()
            .map(|i| Instrument {
                quote_volume_24h: None,
                listed_at: i
                    .list_time
                    .as_deref()
                    .and_then(|t| t.parse::<i64>().ok())
                    .filter(|t| *t > 0)
                    .map(ms_to_utc),
                listing_key: None,
                exchange: ExchangeId::Okx,
                trading: i.state == "live",
                symbol: i.inst_id,
                base: i.base_ccy,
                quote: i.quote_ccy,
                status: i.state,
            })
            .collect())
    }

    fn volumes_request(&self) -> Option<RestRequest> {
        let mut url = join_path(&self.rest_url, "api/v5/market/tickers");
        url.query_pairs_mut().append_pair("instType", "SPOT");
        Some(RestRequest { url, weight: 1 })
    }

    fn parse_volumes(
        &self,
        body: &[u8],
    ) -> Result<Vec<(String, rust_decimal::Decimal)>, DecodeError> {
        let data: Vec<WireTicker<'_>> = rest_data(body)?;
        data.into_iter()
            .map(|t| Ok((t.inst_id, parse_non_negative("volCcy24h", t.vol_ccy24h)?)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange::tests_support::{crypto_msg_parser_frames, dec, fixture};

    fn okx() -> Okx {
        Okx::new(
            Url::parse("ws://127.0.0.1:9100/okx").unwrap(),
            Url::parse("http://127.0.0.1:9100/okx").unwrap(),
        )
    }

    fn decode(frame: &str) -> Result<Decoded, DecodeError> {
        okx().decode(frame, Utc::now(), &mut DecodeState::default())
    }

    #[test]
    fn the_documented_push_decodes_with_the_string_confirm() {
        let frame = fixture("ws/docs_example_okx_ws_candle.json");
        let Decoded::Candles(events) = decode(&frame).unwrap() else {
            panic!("candles expected")
        };
        let e = &events[0];
        assert!(e.is_final, "confirm \"1\" is closed");
        assert_eq!(e.candle.symbol, "BTC-USDT");
        assert_eq!(
            e.candle.interval_start.timestamp_millis(),
            1_784_125_860_000
        );
        assert_eq!(e.candle.open, dec("117842.1"));
        assert_eq!(e.candle.low.to_string(), "117830");
        assert_eq!(e.candle.volume, dec("12.48391"));
        assert_eq!(e.candle.quote_volume, Some(dec("1471245.7716176")));
        assert_eq!(e.candle.trade_count, None);
        let open = frame.replace(
            r#""1"
    ]"#,
            r#""0"
    ]"#,
        );
        assert_ne!(open, frame, "the fixture ends its row with confirm");
        let Decoded::Candles(events) = decode(&open).unwrap() else {
            panic!()
        };
        assert!(!events[0].is_final, "confirm \"0\" is open");
        // A bool or a number is not OKX's confirm.
        let err = decode(&frame.replace(
            r#""1"
    ]"#,
            "true]",
        ))
        .unwrap_err();
        assert!(
            matches!(err, DecodeError::Json(_) | DecodeError::Shape(_)),
            "{err}"
        );
        let err = decode(&frame.replace(
            r#""1"
    ]"#,
            r#""yes"]"#,
        ))
        .unwrap_err();
        assert!(err.to_string().contains("confirm"), "{err}");
    }

    #[test]
    fn recorded_legacy_rows_are_refused_not_guessed() {
        // crypto-msg-parser's 2022 captures: 7-element rows without confirm.
        let frames = crypto_msg_parser_frames("okx");
        assert!(frames.len() >= 5, "{}", frames.len());
        for f in frames.iter().filter(|f| f.contains("candle1m")) {
            let err = decode(f).unwrap_err();
            assert!(err.to_string().contains("legacy"), "{err}: {f}");
        }
    }

    #[test]
    fn control_frames_are_classified() {
        assert_eq!(
            decode("pong").unwrap(),
            Decoded::Control(Control::Heartbeat)
        );
        let ack = r#"{"id":"sub1","event":"subscribe","arg":{"channel":"candle1m","instId":"BTC-USDT"},"connId":"a4d3ae55"}"#;
        assert_eq!(decode(ack).unwrap(), Decoded::Control(Control::Ack));
        let err = r#"{"event":"error","code":"60018","msg":"Wrong URL or channel:candle1m,instId:BTC-USDT doesn't exist. Please use the correct URL, channel and parameters referring to API document.","connId":"a4d3ae55"}"#;
        match decode(err).unwrap() {
            Decoded::Control(Control::ExchangeError(m)) => assert!(m.contains("60018"), "{m}"),
            other => panic!("{other:?}"),
        }
        let notice = r#"{"event":"notice","code":"64008","msg":"The connection will soon be closed for a service upgrade. Please reconnect.","connId":"a4d3ae55"}"#;
        assert_eq!(
            decode(notice).unwrap(),
            Decoded::Control(Control::ServerShutdown)
        );
        assert!(matches!(decode("{not json"), Err(DecodeError::Json(_))));
        assert!(
            decode(r#"{"arg":{"channel":"tickers","instId":"BTC-USDT"},"data":[{}]}"#).is_err()
        );
    }

    #[test]
    fn the_recorded_rest_answer_reads_oldest_first_and_skips_the_open_minute() {
        let body = fixture("rest/okx_rest_market_candles_BTC-USDT-SWAP_1m_2025-05-12.json");
        let candles = okx()
            .parse_rest_klines("BTC-USDT-SWAP", body.as_bytes(), DateTime::<Utc>::MAX_UTC)
            .unwrap();
        assert_eq!(candles.len(), 2);
        assert!(candles[0].interval_start < candles[1].interval_start);
        assert_eq!(
            candles[1].interval_start.timestamp_millis(),
            1_747_094_040_000
        );
        assert_eq!(candles[1].quote_volume, Some(dec("1069603.34883")));
        // At 2025-05-12 23:54:30 the newer minute is still open.
        let now = ms_to_utc(1_747_094_070_000);
        let candles = okx()
            .parse_rest_klines("BTC-USDT-SWAP", body.as_bytes(), now)
            .unwrap();
        assert_eq!(candles.len(), 1);
        let err = okx()
            .parse_rest_klines(
                "BTC-USDT",
                br#"{"code":"50011","msg":"Too Many Requests","data":[]}"#,
                now,
            )
            .unwrap_err();
        assert!(err.to_string().contains("50011"), "{err}");
    }

    #[test]
    fn requests_use_the_business_url_and_exclusive_bounds() {
        let pairs: Vec<Pair> = (0..150)
            .map(|i| Pair::new(ExchangeId::Okx, format!("C{i}-USDT")))
            .collect();
        let x = Okx::new(
            Url::parse("wss://ws.okx.com:8443/ws/v5/public").unwrap(),
            Url::parse("https://www.okx.com").unwrap(),
        );
        assert_eq!(
            x.connect_url(&pairs).as_str(),
            "wss://ws.okx.com:8443/ws/v5/business"
        );
        let subs = x.subscribe_messages(&pairs);
        assert_eq!(subs.len(), 2);
        let first: Value = serde_json::from_str(&subs[0]).unwrap();
        assert_eq!(first["op"], "subscribe");
        assert_eq!(first["args"].as_array().unwrap().len(), 100);
        assert_eq!(first["args"][0]["channel"], "candle1m");
        let m = Minute::from_epoch_ms(1_747_094_040_000).unwrap();
        let req = x.rest_klines_request("BTC-USDT", m..m.plus(100));
        let q: std::collections::HashMap<_, _> = req.url.query_pairs().into_owned().collect();
        assert_eq!(req.url.path(), "/api/v5/market/history-candles");
        assert_eq!(q["before"], (m.epoch_ms() - 1).to_string());
        assert_eq!(q["after"], m.plus(100).epoch_ms().to_string());
        assert_eq!(q["limit"], "100");
        assert_eq!(x.normalize_symbol("btc-usdt").unwrap(), "BTC-USDT");
        assert!(x.normalize_symbol("BTCUSDT").is_err());
        assert!(x.normalize_symbol("BTC-USDT-SWAP").is_err());
    }

    #[test]
    fn instruments_and_time_parse() {
        let body = br#"{"code":"0","msg":"","data":[{"instType":"SPOT","instId":"BTC-USDT","baseCcy":"BTC","quoteCcy":"USDT","state":"live","listTime":"1548133413000"},{"instType":"SPOT","instId":"OLD-USDT","baseCcy":"OLD","quoteCcy":"USDT","state":"suspend","listTime":""}]}"#;
        let list = okx().parse_instruments(body).unwrap();
        assert_eq!(list.len(), 2);
        assert!(list[0].trading && !list[1].trading);
        assert_eq!(
            (list[0].base.as_str(), list[0].quote.as_str()),
            ("BTC", "USDT")
        );
        let t = okx()
            .parse_server_time(br#"{"code":"0","msg":"","data":[{"ts":"1597026383085"}]}"#)
            .unwrap();
        assert_eq!(t.timestamp_millis(), 1_597_026_383_085);
    }
}
