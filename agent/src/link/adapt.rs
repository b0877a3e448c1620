//! Adaptive compression of change sets (the default; `--compress N` forces
//! a level).
//!
//! Like `zstd --adapt`: the sender times, for each change set it sends, the
//! compression and the write onto the link (which blocks when the link, not
//! the agent, is the bottleneck: the TCP send buffer is full). While
//! compressing takes clearly longer than writing, the compressor is the
//! bottleneck and the level goes down, to none at all; while writing takes
//! clearly longer than compressing, the link is the bottleneck and the level
//! goes up (to [`MAX_LEVEL`]). At level 0 the time compressing at level 1
//! would take is estimated from [`LEVEL1_BYTES_PER_SEC`]. Decisions are
//! made over at least [`WINDOW_BYTES`] of change sets, so tiny replication
//! sets do not make the level jump around.

use std::time::Duration;

/// Highest level the adaptation goes to (higher levels cost far more CPU
/// for little gain on change sets).
pub const MAX_LEVEL: i32 = 9;
/// Level an adaptive link starts at.
pub const START_LEVEL: i32 = 1;
/// Conservative zstd level-1 speed, to judge at level 0 whether compressing
/// would pay off.
pub const LEVEL1_BYTES_PER_SEC: f64 = 300e6;
/// Bytes of change sets measured before each decision.
pub const WINDOW_BYTES: u64 = 4 << 20;
/// How much longer one side must take than the other before the level moves.
const HYSTERESIS: f64 = 2.0;

/// Which way the level should go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Move {
    Down,
    Keep,
    Up,
}

/// The decision: `compress` and `write` are the time spent compressing and
/// writing `bytes` (uncompressed) of change sets at `level`.
pub fn decide(level: i32, bytes: u64, compress: Duration, write: Duration) -> Move {
    let w = write.as_secs_f64();
    let c = if level <= 0 {
        bytes as f64 / LEVEL1_BYTES_PER_SEC
    } else {
        compress.as_secs_f64()
    };
    if w > HYSTERESIS * c && level < MAX_LEVEL {
        Move::Up
    } else if level > 0 && c > HYSTERESIS * w {
        Move::Down
    } else {
        Move::Keep
    }
}

/// The compression level of one link: fixed, or adapted as sets are sent.
#[derive(Debug, Clone)]
pub struct Level {
    level: i32,
    adaptive: bool,
    bytes: u64,
    compress: Duration,
    write: Duration,
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
        }
    }

    /// The level for the next change set.
    pub fn get(&self) -> i32 {
        self.level
    }

    /// Record one change set of `bytes` (uncompressed) sent at the current
    /// level; moves the level once a window is full.
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
        match decide(self.level, self.bytes, self.compress, self.write) {
            Move::Up => self.level += 1,
            Move::Down => self.level -= 1,
            Move::Keep => {}
        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_fast_link_lowers_the_level_to_none() {
        // Loopback: compressing 14 MiB takes 50 ms, writing it 5 ms.
        assert_eq!(decide(3, 14 << 20, ms(50), ms(5)), Move::Down);
        assert_eq!(decide(1, 14 << 20, ms(30), ms(8)), Move::Down);
        // At 0, level 1 would cost ~49 ms for 14 MiB: writing in 15 ms stays.
        assert_eq!(decide(0, 14 << 20, ms(0), ms(15)), Move::Keep);
    }

    #[test]
    fn a_slow_link_raises_the_level() {
        // 100 Mbit/s: 14 MiB take over a second to write.
        assert_eq!(decide(0, 14 << 20, ms(0), ms(1100)), Move::Up);
        assert_eq!(decide(3, 14 << 20, ms(50), ms(600)), Move::Up);
        assert_eq!(decide(MAX_LEVEL, 14 << 20, ms(200), ms(900)), Move::Keep);
    }

    #[test]
    fn balanced_keeps_the_level() {
        assert_eq!(decide(3, 14 << 20, ms(50), ms(40)), Move::Keep);
        assert_eq!(decide(3, 14 << 20, ms(40), ms(70)), Move::Keep);
    }

    #[test]
    fn a_fixed_level_never_moves() {
        let mut l = Level::new(3, false);
        for _ in 0..10 {
            l.record(14 << 20, ms(50), ms(1));
        }
        assert_eq!(l.get(), 3);
    }

    #[test]
    fn adapts_once_per_window_and_stays_in_bounds() {
        let mut l = Level::new(START_LEVEL, true);
        // Small sets: no decision until a window is full.
        for _ in 0..3 {
            l.record(1 << 20, ms(10), ms(1));
        }
        assert_eq!(l.get(), START_LEVEL);
        l.record(1 << 20, ms(10), ms(1));
        assert_eq!(l.get(), 0);
        for _ in 0..10 {
            l.record(8 << 20, ms(0), ms(2));
        }
        assert_eq!(l.get(), 0, "never below 0");
        for _ in 0..40 {
            l.record(8 << 20, ms(10), ms(5000));
        }
        assert_eq!(l.get(), MAX_LEVEL, "never above the maximum");
    }
}
