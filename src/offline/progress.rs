//! Progress of a dataset run on standard error: a bar on a terminal, a plain line every ten
//! seconds otherwise (logs, CI), nothing with `--quiet`.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub struct Progress {
    total: u64,
    done: u64,
    skipped: u64,
    started: Instant,
    last_line: Instant,
    mode: Mode,
}

enum Mode {
    Quiet,
    Lines,
    Bar(ProgressBar),
}

const LINE_EVERY: Duration = Duration::from_secs(10);

impl Progress {
    pub fn new(total: usize, quiet: bool) -> Progress {
        let total = total as u64;
        let mode = if quiet {
            Mode::Quiet
        } else if std::io::stderr().is_terminal() {
            let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template(
                    "{bar:30} {pos}/{len} pictures  {per_sec}  {eta} left  {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            Mode::Bar(bar)
        } else {
            Mode::Lines
        };
        Progress {
            total,
            done: 0,
            skipped: 0,
            started: Instant::now(),
            last_line: Instant::now(),
            mode,
        }
    }

    /// One picture finished (`ok`) or skipped.
    pub fn tick(&mut self, ok: bool) {
        self.done += 1;
        if !ok {
            self.skipped += 1;
        }
        match &self.mode {
            Mode::Quiet => {}
            Mode::Bar(bar) => {
                bar.inc(1);
                if self.skipped > 0 {
                    bar.set_message(format!("{} skipped", self.skipped));
                }
            }
            Mode::Lines => {
                if self.last_line.elapsed() >= LINE_EVERY || self.done == self.total {
                    self.last_line = Instant::now();
                    eprintln!("{}", self.status());
                }
            }
        }
    }

    /// Prints a message without breaking the bar.
    pub fn println(&self, text: &str) {
        match &self.mode {
            Mode::Bar(bar) => bar.suspend(|| eprintln!("{text}")),
            _ => eprintln!("{text}"),
        }
    }

    /// Runs `f` (which prints to standard output) without breaking the bar.
    pub fn suspend<T>(&self, f: impl FnOnce() -> T) -> T {
        match &self.mode {
            Mode::Bar(bar) => bar.suspend(f),
            _ => f(),
        }
    }

    fn rate(&self) -> f64 {
        self.done as f64 / self.started.elapsed().as_secs_f64().max(1e-9)
    }

    fn status(&self) -> String {
        let rate = self.rate();
        let left = (self.total - self.done) as f64 / rate.max(1e-9);
        format!(
            "explain: {}/{} pictures ({:.0}%), {rate:.1} pictures/s, about {} left{}",
            self.done,
            self.total,
            100.0 * self.done as f64 / self.total.max(1) as f64,
            duration(left),
            if self.skipped > 0 {
                format!(", {} skipped", self.skipped)
            } else {
                String::new()
            }
        )
    }

    /// Clears the bar and returns the pictures done and the rate.
    pub fn finish(self) -> (u64, f64) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
        (self.done, self.rate())
    }
}

fn duration(secs: f64) -> String {
    let s = secs.round() as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s / 60 % 60),
    }
}
