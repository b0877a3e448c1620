//! Bandwidth limit: a token bucket on the sender, optionally only within a
//! daily time window (`10M`, `500k@08:00-18:00`).

use std::str::FromStr;
use std::time::{Duration, Instant};

/// A parsed `--bwlimit RATE[@HH:MM-HH:MM]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BwLimit {
    /// Bytes per second.
    pub bytes_per_sec: u64,
    /// Minutes after midnight UTC
    /// when the limit starts and ends; `None`: always. A window that ends
    /// before it starts spans midnight (`22:00-06:00`).
    pub window: Option<(u32, u32)>,
}

fn parse_rate(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('k' | 'K') => (&s[..s.len() - 1], 1u64 << 10),
        Some('m' | 'M') => (&s[..s.len() - 1], 1 << 20),
        Some('g' | 'G') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    let v: f64 = num.parse().map_err(|_| {
        format!("bandwidth {s:?} is not a number with an optional k/M/G suffix (e.g. 10M, 500k)")
    })?;
    if v.is_nan() || v <= 0.0 {
        return Err(format!("bandwidth {s:?} must be above zero"));
    }
    Ok(((v * mult as f64) as u64).max(1))
}

fn parse_hm(s: &str) -> Result<u32, String> {
    let (h, m) = s
        .split_once(':')
        .ok_or_else(|| format!("time {s:?} must be HH:MM"))?;
    let (h, m): (u32, u32) = (
        h.parse().map_err(|_| format!("hour in {s:?}"))?,
        m.parse().map_err(|_| format!("minute in {s:?}"))?,
    );
    if h > 24 || m > 59 || (h == 24 && m > 0) {
        return Err(format!("time {s:?} is not a time of day"));
    }
    Ok(h * 60 + m)
}

impl FromStr for BwLimit {
    type Err = String;
    fn from_str(s: &str) -> Result<BwLimit, String> {
        let (rate, window) = match s.split_once('@') {
            None => (s, None),
            Some((r, w)) => {
                let (a, b) = w
                    .split_once('-')
                    .ok_or_else(|| format!("schedule {w:?} must be HH:MM-HH:MM"))?;
                (r, Some((parse_hm(a)?, parse_hm(b)?)))
            }
        };
        Ok(BwLimit {
            bytes_per_sec: parse_rate(rate)?,
            window,
        })
    }
}

impl BwLimit {
    /// Whether the limit applies at `minute` after midnight.
    pub fn active_at(&self, minute: u32) -> bool {
        match self.window {
            None => true,
            Some((a, b)) if a <= b => minute >= a && minute < b,
            Some((a, b)) => minute >= a || minute < b,
        }
    }
}

fn minute_now() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ((secs % 86_400) / 60) as u32
}

/// A token bucket: `take(n)` waits until `n` bytes may go.
#[derive(Debug)]
pub struct Bucket {
    limit: Option<BwLimit>,
    tokens: f64,
    last: Instant,
}

impl Bucket {
    /// A bucket for `limit` (`None`: unlimited). It holds at most one
    /// second of traffic.
    pub fn new(limit: Option<BwLimit>) -> Bucket {
        Bucket {
            limit,
            tokens: 0.0,
            last: Instant::now(),
        }
    }

    /// How long to wait before sending `n` bytes (and account for them).
    pub fn reserve(&mut self, n: u64) -> Duration {
        let Some(l) = self.limit.filter(|l| l.active_at(minute_now())) else {
            return Duration::ZERO;
        };
        let rate = l.bytes_per_sec as f64;
        let now = Instant::now();
        self.tokens = (self.tokens + now.duration_since(self.last).as_secs_f64() * rate).min(rate);
        self.last = now;
        self.tokens -= n as f64;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / rate)
        }
    }

    /// Wait until `n` bytes may go.
    pub async fn take(&mut self, n: u64) {
        let d = self.reserve(n);
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rates_and_windows() {
        let l: BwLimit = "10M".parse().unwrap();
        assert_eq!(l.bytes_per_sec, 10 << 20);
        assert!(l.active_at(0));
        let l: BwLimit = "500k@08:00-18:00".parse().unwrap();
        assert_eq!(l.bytes_per_sec, 500 << 10);
        assert!(l.active_at(8 * 60) && !l.active_at(18 * 60) && !l.active_at(60));
        let l: BwLimit = "1G@22:00-06:00".parse().unwrap();
        assert!(l.active_at(23 * 60) && l.active_at(60) && !l.active_at(12 * 60));
        for bad in ["", "x", "0", "-5M", "5M@8-9", "5M@25:00-26:00"] {
            assert!(bad.parse::<BwLimit>().is_err(), "{bad}");
        }
    }

    #[test]
    fn bucket_waits_for_tokens() {
        let mut b = Bucket::new(Some("1M".parse().unwrap()));
        assert!(b.reserve(512 << 10) > Duration::from_millis(300));
        let mut free = Bucket::new(None);
        assert_eq!(free.reserve(1 << 30), Duration::ZERO);
    }
}
