//! Progress reporting: libraries call these methods; the binary decides how to
//! draw them (indicatif bar on a terminal, plain lines otherwise, JSON lines
//! for automation).

/// A sink for progress of one long operation. Implementations must be cheap
/// to call from many threads.
pub trait Progress: Send + Sync {
    /// A new phase begins (`"hashing"`, `"writing archive"`), with totals when known.
    fn phase(&self, name: &str, total_bytes: Option<u64>, total_items: Option<u64>);
    /// Work was done in the current phase.
    fn advance(&self, bytes: u64, items: u64);
    /// A one-line note for the user (a warning, a skipped socket).
    fn note(&self, message: &str);
    /// The current phase ended.
    fn finish(&self) {}
    /// Totals of the current phase became known later (from a background
    /// count); counters are kept.
    fn totals(&self, _total_bytes: Option<u64>, _total_items: Option<u64>) {}
    /// Whether this sink draws totals (an ETA): libraries only count ahead
    /// in the background when it does.
    fn wants_totals(&self) -> bool {
        false
    }
}

/// Progress that goes nowhere.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _: &str, _: Option<u64>, _: Option<u64>) {}
    fn advance(&self, _: u64, _: u64) {}
    fn note(&self, _: &str) {}
}
