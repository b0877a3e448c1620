//! Test hooks that hold the target at an exact moment while a file exists,
//! so a test can act there (read the status, kill -9 the daemon) instead of
//! hoping a timer lands in the right place. Both are set from environment
//! variables a test gives the daemon; neither does anything unless its file
//! exists.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use tracing::warn;

/// Environment variable naming the file of the hold *inside* a change set's
/// apply ([`hold_mid_apply`]).
pub const HOLD_MID_APPLY_ENV: &str = "STANDIN_TEST_HOLD_MID_APPLY";

/// Wait while `file` exists; `<file>.held` holds `seq` while waiting (the
/// test's sign that the hold is in place) and is removed after.
pub fn hold_while(file: &Path, seq: u64, at: &str) {
    if !file.exists() {
        return;
    }
    warn!(seq, file = %file.display(), "test hook: holding {at} while this file exists");
    let held = held_path(file);
    let _ = std::fs::write(&held, seq.to_string());
    while file.exists() {
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = std::fs::remove_file(&held);
}

/// The file that tells a test the hold of `file` is in place.
pub fn held_path(file: &Path) -> PathBuf {
    let mut held = file.as_os_str().to_owned();
    held.push(".held");
    PathBuf::from(held)
}

/// The hold inside an apply: called after each record of change set `seq`
/// is applied (`done` records of `total`). Holds once at least half of the
/// set's records are applied, when the file named by
/// [`HOLD_MID_APPLY_ENV`] exists and holds `seq` (the test picks the set).
pub fn hold_mid_apply(seq: u64, done: usize, total: usize) {
    static FILE: OnceLock<Option<PathBuf>> = OnceLock::new();
    let Some(file) = FILE
        .get_or_init(|| std::env::var_os(HOLD_MID_APPLY_ENV).map(PathBuf::from))
        .as_deref()
    else {
        return;
    };
    if done != total.div_ceil(2) {
        return;
    }
    let wanted = std::fs::read_to_string(file)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok());
    if wanted == Some(seq) {
        hold_while(file, seq, "a change set's apply half way");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_while_waits_for_the_file_and_signs_the_hold() {
        let d = tempfile::tempdir().unwrap();
        let file = d.path().join("hold");
        // No file: no wait, no sign.
        hold_while(&file, 3, "nothing");
        assert!(!held_path(&file).exists());
        std::fs::write(&file, "").unwrap();
        let f = file.clone();
        let t = std::thread::spawn(move || hold_while(&f, 7, "a test"));
        let held = held_path(&file);
        let mut seen = None;
        for _ in 0..500 {
            if let Ok(s) = std::fs::read_to_string(&held) {
                seen = Some(s);
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(seen.as_deref(), Some("7"));
        assert!(!t.is_finished(), "the hold ended with its file still there");
        std::fs::remove_file(&file).unwrap();
        t.join().unwrap();
        assert!(!held.exists(), "the sign outlived the hold");
    }
}
