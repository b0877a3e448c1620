//! Which relative paths replication leaves out, with the mirror's rules
//! ([`ScanOptions`]): exclude globs (an entry and everything below it) and,
//! for the root `/`, system directories kept empty.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use anyhow::Result;
use globset::GlobSet;
use standin_builder::scan::ScanOptions;

/// See the module documentation.
pub struct Excluder {
    globs: GlobSet,
    keep_empty: Vec<Vec<u8>>,
}

impl Excluder {
    /// Build from the mirror's scan options for `root`.
    pub fn new(root: &Path, opts: &ScanOptions) -> Result<Excluder> {
        let (globs, keep_empty) = standin_builder::scan::filters(root, opts)?;
        Ok(Excluder { globs, keep_empty })
    }

    /// Whether `rel` is left out.
    pub fn excluded(&self, rel: &[u8]) -> bool {
        if rel.is_empty() {
            return false;
        }
        // Every ancestor (and the path itself) against the globs; strict
        // ancestors against the kept-empty directories.
        let mut end = 0;
        loop {
            let next = rel[end..].iter().position(|&b| b == b'/').map(|i| end + i);
            let prefix = &rel[..next.unwrap_or(rel.len())];
            let mut slashed = Vec::with_capacity(prefix.len() + 1);
            slashed.push(b'/');
            slashed.extend_from_slice(prefix);
            if self.globs.is_match(Path::new(OsStr::from_bytes(&slashed))) {
                return true;
            }
            match next {
                Some(i) => {
                    if self.keep_empty.iter().any(|k| k == prefix) {
                        return true;
                    }
                    end = i + 1;
                }
                None => return false,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_and_kept_empty_dirs() {
        let t = tempfile::tempdir().unwrap();
        let opts = ScanOptions {
            excludes: vec!["/var/cache/**".into(), "*.tmp".into()],
            always_system_excludes: true,
            ..Default::default()
        };
        let x = Excluder::new(t.path(), &opts).unwrap();
        assert!(!x.excluded(b"proc"));
        assert!(x.excluded(b"proc/1"));
        assert!(x.excluded(b"var/cache/apt/x"));
        assert!(!x.excluded(b"var/cache"));
        assert!(x.excluded(b"a/b.tmp/c"));
        assert!(!x.excluded(b"etc/passwd"));
    }
}
