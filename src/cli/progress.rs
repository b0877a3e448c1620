//! Drawing the libraries' [`Progress`]: an indicatif bar (bytes, files,
//! rate, ETA) on a terminal, plain lines every ~2 s otherwise, or a JSON
//! lines stream (`--progress json`) for automation.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use standin_builder::Progress;

/// How progress is shown.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// A bar on a terminal, plain lines otherwise.
    #[default]
    Auto,
    /// Always the bar.
    Bar,
    /// Plain lines every ~2 seconds.
    Plain,
    /// JSON lines on stderr.
    Json,
    /// Nothing.
    None,
}

const WITH_TOTAL: &str =
    "{spinner} {prefix} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} {binary_bytes_per_sec} {msg} ETA {eta}";

struct Phase {
    name: String,
    started: Instant,
    total_bytes: Option<u64>,
    total_items: Option<u64>,
    last_line: Instant,
}

/// A [`Progress`] for the command line.
pub struct CliProgress {
    mode: ProgressMode,
    bar: Option<ProgressBar>,
    bytes: AtomicU64,
    items: AtomicU64,
    phase: Mutex<Phase>,
}

/// `1.5 GiB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl CliProgress {
    /// Progress in the given mode (`Auto` picks the bar on a terminal).
    pub fn new(mode: ProgressMode) -> Self {
        let mode = match mode {
            ProgressMode::Auto if std::io::stderr().is_terminal() => ProgressMode::Bar,
            ProgressMode::Auto => ProgressMode::Plain,
            m => m,
        };
        let bar = (mode == ProgressMode::Bar).then(|| {
            let b = ProgressBar::new_spinner();
            b.set_draw_target(ProgressDrawTarget::stderr());
            b
        });
        Self {
            mode,
            bar,
            bytes: AtomicU64::new(0),
            items: AtomicU64::new(0),
            phase: Mutex::new(Phase {
                name: String::new(),
                started: Instant::now(),
                total_bytes: None,
                total_items: None,
                last_line: Instant::now(),
            }),
        }
    }

    fn line(&self, p: &Phase, done: bool) {
        let bytes = self.bytes.load(Ordering::Relaxed);
        let items = self.items.load(Ordering::Relaxed);
        let secs = p.started.elapsed().as_secs_f64().max(0.001);
        let rate = bytes as f64 / secs;
        match self.mode {
            ProgressMode::Plain => {
                let mut s = format!("{}: {} files, {}", p.name, items, human_bytes(bytes));
                if let Some(t) = p.total_bytes {
                    s.push_str(&format!(" of {}", human_bytes(t)));
                }
                s.push_str(&format!(", {}/s", human_bytes(rate as u64)));
                if let (Some(t), false) = (p.total_bytes, done) {
                    if rate > 0.0 && t > bytes {
                        s.push_str(&format!(", ETA {}s", ((t - bytes) as f64 / rate) as u64));
                    }
                }
                if done {
                    s.push_str(&format!(", done in {secs:.1}s"));
                }
                eprintln!("{s}");
            }
            ProgressMode::Json => {
                let v = serde_json::json!({
                    "event": if done { "finish" } else { "progress" },
                    "phase": p.name,
                    "bytes": bytes,
                    "items": items,
                    "total_bytes": p.total_bytes,
                    "total_items": p.total_items,
                    "bytes_per_sec": rate as u64,
                });
                let _ = writeln!(std::io::stderr(), "{v}");
            }
            _ => {}
        }
    }
}

impl Progress for CliProgress {
    fn phase(&self, name: &str, total_bytes: Option<u64>, total_items: Option<u64>) {
        self.bytes.store(0, Ordering::Relaxed);
        self.items.store(0, Ordering::Relaxed);
        let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
        *p = Phase {
            name: name.to_string(),
            started: Instant::now(),
            total_bytes,
            total_items,
            last_line: Instant::now(),
        };
        match self.mode {
            ProgressMode::Bar => {
                let bar = self.bar.as_ref().expect("bar");
                bar.reset();
                let tmpl = if let Some(t) = total_bytes {
                    bar.set_length(t);
                    WITH_TOTAL
                } else {
                    "{spinner} {prefix} [{elapsed_precise}] {bytes} {binary_bytes_per_sec} {msg}"
                };
                if let Ok(style) = ProgressStyle::with_template(tmpl) {
                    bar.set_style(style.progress_chars("=> "));
                }
                bar.set_prefix(name.to_string());
                bar.set_message("0 files");
                bar.enable_steady_tick(Duration::from_millis(200));
            }
            ProgressMode::Json => {
                let v = serde_json::json!({"event": "phase", "phase": name,
                    "total_bytes": total_bytes, "total_items": total_items});
                let _ = writeln!(std::io::stderr(), "{v}");
            }
            _ => {}
        }
    }

    fn advance(&self, bytes: u64, items: u64) {
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
        let n = self.items.fetch_add(items, Ordering::Relaxed) + items;
        match self.mode {
            ProgressMode::Bar => {
                let bar = self.bar.as_ref().expect("bar");
                bar.inc(bytes);
                if n % 64 == 0 || items == 0 {
                    bar.set_message(format!("{n} files"));
                }
            }
            ProgressMode::Plain | ProgressMode::Json => {
                let Ok(mut p) = self.phase.try_lock() else {
                    return;
                };
                if p.last_line.elapsed() >= Duration::from_secs(2) {
                    p.last_line = Instant::now();
                    self.line(&p, false);
                }
            }
            _ => {}
        }
    }

    fn note(&self, message: &str) {
        match self.mode {
            ProgressMode::Bar => self
                .bar
                .as_ref()
                .expect("bar")
                .println(format!("note: {message}")),
            ProgressMode::Json => {
                let v = serde_json::json!({"event": "note", "message": message});
                let _ = writeln!(std::io::stderr(), "{v}");
            }
            ProgressMode::Plain => eprintln!("note: {message}"),
            _ => {}
        }
    }

    fn totals(&self, total_bytes: Option<u64>, total_items: Option<u64>) {
        {
            let mut p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
            p.total_bytes = total_bytes;
            p.total_items = total_items;
        }
        if let (ProgressMode::Bar, Some(t)) = (self.mode, total_bytes) {
            let bar = self.bar.as_ref().expect("bar");
            bar.set_length(t);
            if let Ok(style) = ProgressStyle::with_template(WITH_TOTAL) {
                bar.set_style(style.progress_chars("=> "));
            }
        }
    }

    fn wants_totals(&self) -> bool {
        self.mode == ProgressMode::Bar
    }

    fn finish(&self) {
        match self.mode {
            ProgressMode::Bar => self.bar.as_ref().expect("bar").finish_and_clear(),
            ProgressMode::Plain | ProgressMode::Json => {
                let p = self.phase.lock().unwrap_or_else(|e| e.into_inner());
                self.line(&p, true);
            }
            _ => {}
        }
    }
}
