//! Runs of file records written on two threads give what the sequential
//! apply gives: the same replica, results, ledger records and counts.

use super::file_tests::{file_entry, rec};
use super::*;
use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;

/// Everything about a tree that the apply sets, by relative path: kind,
/// mode, size, mtime (not of directories: the apply's clock), the
/// content digest (files) or link target (symlinks).
fn tree(root: &Path) -> BTreeMap<PathBuf, (u32, u64, i64, i64, Vec<u8>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let body = if m.is_dir() {
                stack.push(p.clone());
                Vec::new()
            } else if m.file_type().is_symlink() {
                std::fs::read_link(&p).unwrap().into_os_string().into_vec()
            } else {
                standin_builder::hash::content_digest(&std::fs::read(&p).unwrap()).to_vec()
            };
            let rel = p.strip_prefix(root).unwrap().to_path_buf();
            let mtime = if m.is_dir() {
                (0, 0)
            } else {
                (m.mtime(), m.mtime_nsec())
            };
            out.insert(rel, (m.mode(), m.size(), mtime.0, mtime.1, body));
        }
    }
    out
}
use std::os::unix::ffi::OsStringExt;

/// Directories `a`, `a/b`, `c`, and entries the records replace: a file,
/// a symlink, an empty directory.
fn replica(two_threads: bool) -> (tempfile::TempDir, PathBuf, DirTarget) {
    let d = tempfile::tempdir().unwrap();
    let root = d.path().join("root");
    std::fs::create_dir_all(root.join("a/b")).unwrap();
    std::fs::create_dir_all(root.join("c/f40")).unwrap();
    std::fs::write(root.join("a/f03"), b"old content").unwrap();
    std::os::unix::fs::symlink("../a/f03", root.join("a/b/f22")).unwrap();
    let mut t = DirTarget::open(&root).unwrap();
    t.write_files_on_two_threads(two_threads);
    (d, root, t)
}

/// 60 file records over three directories (sizes from empty to 200 KB),
/// record 31 with data that does not match its digest and record 47
/// naming a path outside the root.
fn records() -> Vec<Record> {
    let mut out = Vec::new();
    for i in 0..60usize {
        let dir = ["a", "a/b", "c"][i / 20];
        let data: Vec<u8> = (0..(i * i * 57) % 200_000)
            .map(|k| (k * 7 + i) as u8)
            .collect();
        let mut e = file_entry(
            &format!("{dir}/f{i:02}"),
            [0o644, 0o600, 0o755][i % 3],
            &data,
        );
        e.mtime_ns += i as i64 * 1_000_003;
        out.push(rec(&e, &data));
    }
    if let Record::File { data, .. } = &mut out[31] {
        data.push(1);
    }
    if let Record::File { entry, .. } = &mut out[47] {
        entry.path = b"../escape".to_vec();
    }
    out
}

#[test]
fn a_run_of_file_records_on_two_threads_applies_as_the_sequential_apply_does() {
    let records = records();
    let digests: Vec<Option<Digest32>> = records
        .iter()
        .map(|r| match r {
            Record::File { data, .. } => Some(standin_builder::hash::content_digest(data)),
            _ => None,
        })
        .collect();
    let mut got = Vec::new();
    for two in [true, false] {
        let (d, root, mut t) = replica(two);
        t.record_applied(true);
        // The first half with its digests hashed beforehand, the second
        // without: both are checked before anything is written.
        let results = t.apply_files(&records, &digests[..30]);
        let applied = t.take_applied().expect("only file records");
        assert_eq!(t.file_runs_on_two_threads(), u64::from(two));
        // The ledger records describe the files as they are in the replica.
        for a in &applied {
            let m = std::fs::symlink_metadata(root.join(std::str::from_utf8(&a.path).unwrap()))
                .unwrap();
            let r = a.record.as_ref().expect("a trusted record");
            assert_eq!(
                (r.ino, r.ctime),
                (m.ino(), m.ctime() * 1_000_000_000 + m.ctime_nsec())
            );
        }
        let applied: Vec<_> = applied
            .into_iter()
            .map(|a| {
                let r = a.record.unwrap();
                (a.path, r.file_bytes, r.canonical, r.dir, r.link_dev)
            })
            .collect();
        got.push((results, applied, tree(&root), t.files_created()));
        drop(d);
    }
    let (two, one) = (&got[0], &got[1]);
    assert_eq!(two.0.len(), records.len());
    for (i, r) in two.0.iter().enumerate() {
        assert_eq!(r.is_err(), i == 31 || i == 47, "record {i}: {r:?}");
    }
    assert!(matches!(two.0[31], Err(ApplyError::Refused(_))));
    assert_eq!(two.0, one.0, "the same results in the same order");
    assert_eq!(two.1.len(), 58);
    assert_eq!(two.1, one.1, "the same ledger records in the same order");
    assert_eq!(two.2, one.2, "the same replica");
    // Three directories and 58 files (a file, a symlink and an empty
    // directory among them replaced).
    assert_eq!(two.2.len(), 3 + 58);
    for p in ["a/f03", "a/b/f22", "c/f40"] {
        assert_eq!(
            two.2[Path::new(p)].0 & 0o170000,
            0o100000,
            "{p} is a file now"
        );
    }
    assert_eq!(two.3, one.3, "the same files created");
}

#[test]
fn a_run_whose_records_depend_on_each_other_is_written_in_order() {
    // The same path twice, and a file where another record's directory
    // is: the second write wins, the file under the replaced directory
    // fails as it does in order.
    let mut records = Vec::new();
    for i in 0..10 {
        let data = vec![i as u8; 100];
        records.push(rec(&file_entry(&format!("a/f{i}"), 0o644, &data), &data));
    }
    records.push(rec(&file_entry("a/f0", 0o600, b"again"), b"again"));
    let (_d, root, mut t) = replica(true);
    let results = t.apply_files(&records, &[]);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(t.file_runs_on_two_threads(), 0);
    assert_eq!(std::fs::read(root.join("a/f0")).unwrap(), b"again");

    records.pop();
    records.push(rec(&file_entry("a/b", 0o644, b"file"), b"file"));
    records.push(rec(&file_entry("a/b/x", 0o644, b"x"), b"x"));
    assert!(!parallel::independent(&records));
    records.pop();
    assert!(parallel::independent(&records));
}
