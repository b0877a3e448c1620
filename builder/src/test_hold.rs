//! Test hooks that hold a step of the work while a file exists: a test
//! names the file in an environment variable, makes a change while the
//! step waits, then removes the file.

use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

/// Longest a hold lasts (a test that forgot its file does not hang).
pub const MOST: Duration = Duration::from_secs(60);

/// The file named by the environment variable `env` (unset or empty: none).
pub fn file_of(env: &str) -> Option<OsString> {
    std::env::var_os(env).filter(|v| !v.is_empty())
}

/// Wait while `file` exists, at most [`MOST`].
pub fn wait_while_exists(file: &Path) {
    let step = Duration::from_millis(100);
    for _ in 0..MOST.as_millis() / step.as_millis() {
        if !file.exists() {
            return;
        }
        std::thread::sleep(step);
    }
}
