//! Adaptive compression of change sets (the default; `--compress N` forces
//! a level).
//!
//! The sender compresses a change set, then writes it onto the link; the
//! write blocks while the TCP send buffer is full, that is while the link
//! or the receiver is the bottleneck. What counts is the sender's
//! throughput: change-set bytes (before compression) per second spent
//! compressing and writing. The level climbs that hill:
//!
//! - **Settled** at a level, the sender measures its throughput over
//!   windows of at least [`WINDOW_BYTES`]. Every [`PROBE_EVERY`] windows it
//!   tries a neighbouring level, up and down in turn.
//! - **Probing**: a window at the new level. Up is kept, and the climb
//!   goes on, only when the throughput rose by more than [`TOLERANCE`]; a
//!   step down is kept unless the throughput fell by more than that (the
//!   same speed for less CPU is better: the source is a production server).
//!   Otherwise the level goes back and settles.
//!
//! On loopback or a fast LAN, where the receiver and not the wire limits
//! the rate, compressing never makes the sender faster, so the level sits
//! at none, with one probe window in [`PROBE_EVERY`] + 1. On a slow link
//! the level climbs while each step still pays (an earlier rule that only
//! compared compressing with writing time flipped between 0 and 1 on every
//! window: at level 1 the compressed output fits the socket buffer, so the
//! write looks fast).

use std::time::Duration;

/// Highest level the adaptation goes to (higher levels cost far more CPU
/// for little gain on change sets).
pub const MAX_LEVEL: i32 = 9;
/// Level an adaptive link starts at.
pub const START_LEVEL: i32 = 1;
/// Bytes of change sets measured before each decision.
pub const WINDOW_BYTES: u64 = 4 << 20;
/// Settled windows between two probes of a neighbouring level.
pub const PROBE_EVERY: u32 = 8;
/// Relative throughput change that counts as a change (one level more
/// sends a few per cent fewer bytes on a slow link).
pub const TOLERANCE: f64 = 0.02;

/// Where the adaptation is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// At a level; windows measured since the last probe.
    Settled { windows: u32 },
    /// Trying the current level, coming from `from` whose throughput was
    /// `rate` (bytes per second).
    Probing { from: i32, rate: f64 },
}

/// The compression level of one link: fixed, or adapted as sets are sent.
#[derive(Debug, Clone)]
pub struct Level {
    level: i32,
    adaptive: bool,
    bytes: u64,
    compress: Duration,
    write: Duration,
    phase: Phase,
    /// The direction of the last probe (the next one goes the other way).
    probed_up: bool,
}

impl Level {
    /// A fixed level (`adaptive` false) or an adaptive one starting at `level`.
    pub fn new(level: i32, adaptive: bool) -> Level {
        Level {
            level,
            adaptive,
            bytes: 0,
            compress: Duration::ZERO,
            write: Duration::ZERO,
            phase: Phase::Settled {
                windows: PROBE_EVERY - 1,
            },
            probed_up: false,
        }
    }

    /// The level for the next change set.
    pub fn get(&self) -> i32 {
        self.level
    }

    /// Record one change set of `bytes` (uncompressed) sent at the current
    /// level, `compress` and `write` the time spent on each; moves the level
    /// once a window is full.
    pub fn record(&mut self, bytes: u64, compress: Duration, write: Duration) {
        if !self.adaptive {
            return;
        }
        self.bytes += bytes;
        self.compress += compress;
        self.write += write;
        if self.bytes < WINDOW_BYTES {
            return;
        }
        let before = self.level;
        self.decide();
        if self.level != before {
            tracing::debug!(
                from = before,
                to = self.level,
                compress_ms = self.compress.as_millis() as u64,
                write_ms = self.write.as_millis() as u64,
                bytes = self.bytes,
                "compression level adapted"
            );
        }
        self.bytes = 0;
        self.compress = Duration::ZERO;
        self.write = Duration::ZERO;
    }

    /// One decision at the end of a window.
    fn decide(&mut self) {
        let busy = (self.compress + self.write).as_secs_f64().max(1e-6);
        let rate = self.bytes as f64 / busy;
        match self.phase {
            Phase::Settled { windows } if windows + 1 < PROBE_EVERY => {
                self.phase = Phase::Settled {
                    windows: windows + 1,
                };
            }
            Phase::Settled { .. } => {
                let up = match self.level {
                    l if l <= 0 => true,
                    l if l >= MAX_LEVEL => false,
                    _ => !self.probed_up,
                };
                self.probed_up = up;
                self.phase = Phase::Probing {
                    from: self.level,
                    rate,
                };
                self.level += if up { 1 } else { -1 };
            }
            Phase::Probing { from, rate: before } => {
                let climbing = self.level > from;
                let better = rate > before * (1.0 + TOLERANCE);
                let not_worse = rate >= before * (1.0 - TOLERANCE);
                if climbing && better && self.level < MAX_LEVEL {
                    self.phase = Phase::Probing {
                        from: self.level,
                        rate,
                    };
                    self.level += 1;
                } else if (climbing && better) || (!climbing && not_worse) {
                    self.phase = Phase::Settled { windows: 0 };
                } else {
                    self.level = from;
                    self.phase = Phase::Settled { windows: 0 };
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A sender whose change sets compress at zstd-like speeds and ratios,
    /// over a link of `link` compressed bytes/s to a receiver that handles
    /// `receiver` uncompressed bytes/s. The kernel drains the socket buffer
    /// while the sender compresses, so a window takes as long as the slower
    /// of compressing and draining.
    struct Model {
        link: f64,
        receiver: f64,
    }

    /// (compress bytes/s, compressed/raw) of levels 1..=9.
    const ZSTD: [(f64, f64); 9] = [
        (400e6, 0.47),
        (300e6, 0.45),
        (200e6, 0.42),
        (160e6, 0.41),
        (100e6, 0.40),
        (80e6, 0.39),
        (60e6, 0.385),
        (50e6, 0.38),
        (40e6, 0.375),
    ];

    impl Model {
        fn window(&self, level: i32, bytes: u64) -> (Duration, Duration) {
            let b = bytes as f64;
            let (speed, ratio) = if level <= 0 {
                (f64::INFINITY, 1.0)
            } else {
                ZSTD[level as usize - 1]
            };
            let c = b / speed;
            let drain = self.link.min(self.receiver * ratio);
            let t = c.max(b * ratio / drain);
            (
                Duration::from_secs_f64(c),
                Duration::from_secs_f64(t - c + 1e-4),
            )
        }

        /// Levels of `n` windows of 8 MiB sets, starting adaptive.
        fn run(&self, n: usize) -> Vec<i32> {
            let mut l = Level::new(START_LEVEL, true);
            (0..n)
                .map(|_| {
                    let at = l.get();
                    let (c, w) = self.window(at, 8 << 20);
                    l.record(8 << 20, c, w);
                    at
                })
                .collect()
        }
    }

    fn share(levels: &[i32], ok: impl Fn(i32) -> bool) -> f64 {
        let tail = &levels[levels.len() / 4..];
        tail.iter().filter(|&&l| ok(l)).count() as f64 / tail.len() as f64
    }

    #[test]
    fn loopback_settles_at_no_compression() {
        // Receiver-bound at 200 MB/s, link unlimited: compressing never
        // makes the sender faster.
        let m = Model {
            link: f64::INFINITY,
            receiver: 200e6,
        };
        let levels = m.run(200);
        let at0 = share(&levels, |l| l == 0);
        assert!(at0 >= 0.85, "at level 0 {at0:.2} of the time: {levels:?}");
        assert!(levels[20..].iter().all(|&l| l <= 1), "{levels:?}");
    }

    #[test]
    fn a_gigabit_link_keeps_a_low_level() {
        // 1 Gbit/s: levels 1-2 give the most throughput (266-278 MB/s);
        // level 0 is wire-bound at 125 MB/s, level 3 compressor-bound.
        let m = Model {
            link: 125e6,
            receiver: 1e9,
        };
        let levels = m.run(200);
        let low = share(&levels, |l| (1..=2).contains(&l));
        assert!(low >= 0.8, "at levels 1-2 {low:.2} of the time: {levels:?}");
    }

    #[test]
    fn a_slow_link_climbs() {
        // 100 Mbit/s: every level is wire-bound, higher ones send less.
        let m = Model {
            link: 12.5e6,
            receiver: 1e9,
        };
        let levels = m.run(200);
        let high = share(&levels, |l| l >= 3);
        assert!(
            high >= 0.8,
            "at level 3 or more {high:.2} of the time: {levels:?}"
        );
    }

    #[test]
    fn a_fixed_level_never_moves() {
        let mut l = Level::new(3, false);
        for _ in 0..40 {
            l.record(
                14 << 20,
                Duration::from_millis(50),
                Duration::from_millis(1),
            );
        }
        assert_eq!(l.get(), 3);
    }

    #[test]
    fn small_sets_wait_for_a_full_window_and_levels_stay_in_bounds() {
        let ms = Duration::from_millis;
        let mut l = Level::new(START_LEVEL, true);
        // Far less than a window: nothing is decided.
        for _ in 0..3 {
            l.record(1 << 20, ms(10), ms(1));
        }
        assert_eq!(l.get(), START_LEVEL);
        // Fast writes, slow compression: down, and never below 0.
        for _ in 0..100 {
            l.record(8 << 20, ms(40), ms(1));
        }
        assert_eq!(l.get(), 0);
        // Writes that block for seconds whatever the level: up to the top.
        let mut seen = 0;
        for _ in 0..400 {
            let lv = l.get();
            // Each level sends 10% less than the one below it.
            let w = 5000.0 * (1.0 - 0.1 * f64::from(lv.min(9)));
            l.record(8 << 20, ms(1), ms(w as u64));
            seen = seen.max(l.get());
        }
        assert_eq!(
            seen, MAX_LEVEL,
            "never above the maximum, and it gets there"
        );
    }
}
