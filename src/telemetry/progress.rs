//! The one-shot commands' progress (`klines backfill`, `klines archive`):
//! on a terminal an indicatif bar with a message and an ETA; elsewhere (a
//! log, a pipe) a line on stderr at every tenth of the work.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

pub struct Bar {
    bar: Option<ProgressBar>,
    /// The command, at the start of each line (`backfill`).
    what: &'static str,
    /// What is counted (`pages`, `files`).
    unit: &'static str,
    state: Mutex<State>,
}

struct State {
    total: u64,
    done: u64,
    started: Instant,
    next_line: u64,
}

impl Bar {
    pub fn new(what: &'static str, unit: &'static str) -> Bar {
        let bar = std::io::stderr().is_terminal().then(|| {
            let b = ProgressBar::new(0);
            b.set_style(
                ProgressStyle::with_template(&format!(
                    "{{spinner}} [{{elapsed_precise}}] {{bar:32}} {{pos}}/{{len}} {unit} · {{msg}} · ETA {{eta}}"
                ))
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            b
        });
        Bar {
            bar,
            what,
            unit,
            state: Mutex::new(State {
                total: 0,
                done: 0,
                started: Instant::now(),
                next_line: 0,
            }),
        }
    }

    /// The work is known: `total` units; `note` says what it is.
    pub fn planned(&self, total: u64, note: &str) {
        let mut s = self.state.lock().expect("progress poisoned");
        s.total = total;
        s.started = Instant::now();
        s.next_line = total.div_ceil(10).max(1);
        match &self.bar {
            Some(b) => {
                b.set_length(total);
                b.set_message(note.to_owned());
            }
            None if note.is_empty() => eprintln!("{}: {total} {} to fetch", self.what, self.unit),
            None => eprintln!("{}: {note}, {total} {} to fetch", self.what, self.unit),
        }
    }

    /// One unit done; `message` (given the seconds since the start) says
    /// what it brought so far.
    pub fn step(&self, message: impl FnOnce(f64) -> String) {
        let mut s = self.state.lock().expect("progress poisoned");
        s.done += 1;
        let elapsed = s.started.elapsed().as_secs_f64();
        match &self.bar {
            Some(b) => {
                b.inc(1);
                b.set_message(message(elapsed));
            }
            None => {
                if s.done >= s.next_line || s.done == s.total {
                    s.next_line = s.done + s.total.div_ceil(10).max(1);
                    let eta = elapsed / s.done as f64 * s.total.saturating_sub(s.done) as f64;
                    eprintln!(
                        "{}: {}/{} {}, {}, ETA {eta:.0} s",
                        self.what,
                        s.done,
                        s.total,
                        self.unit,
                        message(elapsed)
                    );
                }
            }
        }
    }

    pub fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
