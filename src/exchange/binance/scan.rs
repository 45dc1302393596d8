//! A scanner for the JSON Binance writes in kline frames: compact (no
//! whitespace), strings without escapes, integers, booleans, the two nested
//! objects. It accepts a subset of what serde_json accepts and reads it the
//! same way (a differential test checks it against serde on the recordings
//! and on every truncation and byte change of them); on anything outside the
//! subset, a duplicate or a missing field it gives up and serde_json reads
//! the frame. It exists for speed: the worker's decode is most of its CPU.

use super::{KlineEvent, WireKline};

struct P<'a> {
    s: &'a str,
    b: &'a [u8],
    i: usize,
}

impl<'a> P<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn byte(&mut self, c: u8) -> Option<()> {
        (self.peek()? == c).then(|| self.i += 1)
    }

    fn string(&mut self) -> Option<&'a str> {
        self.byte(b'"')?;
        let start = self.i;
        let rest = self.b.get(start..)?;
        let len = rest
            .iter()
            .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
        if rest[len] != b'"' {
            return None;
        }
        self.i = start + len + 1;
        // '"' is ASCII: both ends are char boundaries.
        self.s.get(start..start + len)
    }

    fn int(&mut self) -> Option<i64> {
        let neg = self.peek()? == b'-';
        if neg {
            self.i += 1;
        }
        let start = self.i;
        let mut v: i64 = 0;
        while let Some(c @ b'0'..=b'9') = self.peek() {
            let d = i64::from(c - b'0');
            v = v.checked_mul(10)?.checked_add(d)?;
            self.i += 1;
        }
        let digits = self.i - start;
        // JSON: at least one digit, no leading zero; floats are not ours.
        // (`-0` too: serde_json reads it as a float.)
        if digits == 0
            || (digits > 1 && self.b[start] == b'0')
            || (neg && v == 0)
            || matches!(self.peek(), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        Some(if neg { -v } else { v })
    }

    fn boolean(&mut self) -> Option<bool> {
        let rest = self.b.get(self.i..)?;
        if rest.starts_with(b"true") {
            self.i += 4;
            Some(true)
        } else if rest.starts_with(b"false") {
            self.i += 5;
            Some(false)
        } else {
            None
        }
    }

    /// A string, integer or boolean the caller does not keep.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b't' | b'f' => self.boolean().map(drop),
            _ => self.int().map(drop),
        }
    }

    /// `{"key":value,…}`, calling `field` after each `key:`; `field`
    /// consumes the value.
    fn object(&mut self, mut field: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.byte(b'{')?;
        if self.byte(b'}').is_some() {
            return Some(());
        }
        loop {
            let key = self.string()?;
            self.byte(b':')?;
            field(self, key)?;
            match self.peek()? {
                b',' => self.i += 1,
                b'}' => {
                    self.i += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }
}

/// Sets a field once: a second value is a duplicate, which serde rejects.
fn once<T>(slot: &mut Option<T>, v: Option<T>) -> Option<()> {
    if slot.is_some() {
        return None;
    }
    *slot = Some(v?);
    Some(())
}

fn kline<'a>(p: &mut P<'a>) -> Option<WireKline<'a>> {
    let (mut t, mut s, mut i, mut o, mut h, mut l, mut c, mut v, mut q, mut n, mut x) = (
        None, None, None, None, None, None, None, None, None, None, None,
    );
    p.object(|p, key| match key {
        "t" => once(&mut t, p.int()),
        "s" => once(&mut s, p.string()),
        "i" => once(&mut i, p.string()),
        "o" => once(&mut o, p.string()),
        "h" => once(&mut h, p.string()),
        "l" => once(&mut l, p.string()),
        "c" => once(&mut c, p.string()),
        "v" => once(&mut v, p.string()),
        "q" => once(&mut q, p.string()),
        "n" => once(&mut n, p.int()),
        "x" => once(&mut x, p.boolean()),
        _ => p.skip_scalar(),
    })?;
    Some(WireKline {
        open_time: t?,
        symbol: s?,
        interval: i?,
        open: o?,
        high: h?,
        low: l?,
        close: c?,
        volume: v?,
        quote_volume: q?,
        trades: n?,
        closed: x?,
    })
}

fn event<'a>(p: &mut P<'a>) -> Option<KlineEvent<'a>> {
    let (mut e, mut big_e, mut k) = (None, None, None);
    p.object(|p, key| match key {
        "e" => once(&mut e, p.string()),
        "E" => once(&mut big_e, p.int()),
        "k" => once(&mut k, kline(p)),
        _ => p.skip_scalar(),
    })?;
    Some(KlineEvent {
        event_type: e?,
        event_time: big_e?,
        kline: k?,
    })
}

/// `{"stream":…,"data":{kline event}}`, exactly and compactly.
pub(super) fn combined_kline(frame: &str) -> Option<KlineEvent<'_>> {
    let mut p = P {
        s: frame,
        b: frame.as_bytes(),
        i: 0,
    };
    let mut data = None;
    p.object(|p, key| match key {
        "data" => once(&mut data, event(p)),
        _ => p.skip_scalar(),
    })?;
    (p.i == p.b.len()).then_some(())?;
    data
}
