use super::*;
use crate::mirror::tests::{entries, sh};
use crate::mirror::{check_and_keep, check_and_keep_with, replica_digest, DiffSession};
use standin_builder::entry::Entry;
use standin_link::message::MirrorEntries;
use std::path::Path;

fn batch(n: u64, entries: Vec<Entry>) -> MirrorEntries {
    MirrorEntries {
        batch: n,
        entries,
        block_size: 4096,
        gone: Vec::new(),
    }
}

/// A sparse listing of `listed` that ends at once, and its early check.
fn sparse_listing(rep: &Path, listed: Vec<Entry>) -> Skip {
    let mut sp = DiffSession::new_sparse(rep).unwrap();
    assert!(sp.precheck.is_some(), "the early check started");
    if !listed.is_empty() {
        sp.diff(&batch(1, listed)).unwrap();
    }
    sp.diff(&batch(2, vec![])).unwrap();
    take(rep).expect("a sealed early check")
}

fn fold(rep: &Path, skip: &Skip) -> (String, u64, u64) {
    match ledger::digest_with(rep, &ledger::path_for(rep), Some(skip))
        .unwrap()
        .unwrap()
    {
        ledger::Outcome::Digest {
            digest,
            reread,
            prechecked,
            ..
        } => (digest, reread, prechecked),
        ledger::Outcome::Unsure(why) => (format!("unsure: {why}"), 0, 0),
    }
}

/// A full (not sparse) comparison of the replica `rep` with every entry
/// `all`, then its end: the replica proven with the root digest `want`.
fn prove(rep: &Path, all: &[Entry], want: &str) {
    let mut full = DiffSession::new(rep).unwrap();
    assert!(
        full.precheck.is_none(),
        "a full comparison checks nothing early"
    );
    full.diff(&batch(1, all.to_vec())).unwrap();
    full.diff(&batch(2, vec![])).unwrap();
    assert_eq!(check_and_keep(rep, want).unwrap(), want);
}

#[test]
fn the_early_check_catches_changes_before_it_and_the_next_mirror_those_after() {
    let t = tempfile::tempdir().unwrap();
    let (src, rep) = (t.path().join("src"), t.path().join("rep"));
    let (s, r) = (src.display(), rep.display());
    sh(&format!(
        "mkdir -p {s}/d {s}/e && for i in 1 2 3 4 5 6; do echo $i > {s}/d/f$i; done && \
         echo x > {s}/e/x && cp -a {s} {r}"
    ));
    let want = replica_digest(&src).unwrap();
    let all = entries(&src);
    prove(&rep, &all, &want);

    // Nothing changed: every carried record is taken from the early check.
    let skip = sparse_listing(&rep, vec![]);
    assert!(skip.failed.is_empty(), "{:?}", skip.failed);
    assert_eq!(skip.records, all.len() as u64);
    let (got, reread, pre) = fold(&rep, &skip);
    assert_eq!(
        (got.as_str(), reread, pre),
        (want.as_str(), 0, all.len() as u64)
    );
    assert_eq!(
        check_and_keep_with(&rep, &want, ledger::Hints::skip(&skip))
            .unwrap()
            .0,
        want
    );

    // Changed behind standin's back before the check runs: a same-size
    // rewrite with another mtime, a chmod, a removed file. The check
    // sees each; the fold reads them again and the digest differs.
    sh(&format!(
        "printf '9\\n' > {r}/d/f1 && chmod 600 {r}/d/f2 && rm {r}/d/f3"
    ));
    let skip = sparse_listing(&rep, vec![]);
    for p in ["d/f1", "d/f2", "d/f3", "d"] {
        assert!(skip.failed.contains(p.as_bytes()), "{p}: {:?}", skip.failed);
    }
    assert_ne!(fold(&rep, &skip).0, want, "the changes are caught");
    assert_ne!(
        check_and_keep_with(&rep, &want, ledger::Hints::skip(&skip))
            .unwrap()
            .0,
        want
    );
    // Repaired (what the retried comparison mirror does), proven again.
    sh(&format!(
        "cp -a {s}/d/f1 {s}/d/f2 {s}/d/f3 {r}/d/ && touch -r {s}/d {r}/d"
    ));
    prove(&rep, &all, &want);

    // Changed after the check and before the end: this mirror does not
    // see it (the documented race, as with a change during the fold)...
    let skip = sparse_listing(&rep, vec![]);
    assert!(skip.failed.is_empty(), "{:?}", skip.failed);
    sh(&format!("chmod 600 {r}/d/f4"));
    assert_eq!(
        check_and_keep_with(&rep, &want, ledger::Hints::skip(&skip))
            .unwrap()
            .0,
        want
    );
    // ... but its record keeps the old change time, so the next mirror's
    // early check finds it.
    let skip = sparse_listing(&rep, vec![]);
    assert!(skip.failed.contains(&b"d/f4"[..]), "{:?}", skip.failed);
    assert_ne!(
        check_and_keep_with(&rep, &want, ledger::Hints::skip(&skip))
            .unwrap()
            .0,
        want
    );
}

#[test]
fn what_the_mirror_listed_or_applied_is_checked_at_the_end() {
    let t = tempfile::tempdir().unwrap();
    let (src, rep) = (t.path().join("src"), t.path().join("rep"));
    let (s, r) = (src.display(), rep.display());
    sh(&format!(
        "mkdir -p {s}/d {s}/e && for i in 1 2 3; do echo $i > {s}/d/f$i; done && \
         echo x > {s}/e/x && cp -a {s} {r}"
    ));
    let want = replica_digest(&src).unwrap();
    let all = entries(&src);
    prove(&rep, &all, &want);

    // The sparse listing names d/f2 (and its directories): they are not
    // taken from the early check, and neither is what the apply made.
    let listed: Vec<Entry> = all
        .iter()
        .filter(|e| ["", "d", "d/f2"].contains(&&*String::from_utf8_lossy(&e.path)))
        .cloned()
        .collect();
    let mut skip = sparse_listing(&rep, listed);
    for p in ["", "d", "d/f2"] {
        assert!(!skip.trusts(p.as_bytes()), "{p} was listed");
    }
    assert!(skip.trusts(b"d/f1") && skip.trusts(b"e/x"));
    // Changed after the check: the listed one is still caught...
    sh(&format!("chmod 600 {r}/d/f2"));
    assert_ne!(fold(&rep, &skip).0, want, "a listed entry is lstat'ed");
    sh(&format!("chmod 644 {r}/d/f2"));
    // ... and so is one the apply touched (here: e/x and, through its
    // parent, e), while the others come from the early check.
    sh(&format!("chmod 600 {r}/e/x"));
    skip.touch(b"e/x");
    assert!(!skip.trusts(b"e") && !skip.trusts(b"e/x"));
    let (got, _, pre) = fold(&rep, &skip);
    assert_ne!(got, want, "an applied path is lstat'ed");
    assert_eq!(pre, all.len() as u64 - 5, "only d/f1 and d/f3 were skipped");
}

#[test]
fn an_early_check_is_dropped_by_a_comparison_and_by_a_replaced_ledger() {
    let t = tempfile::tempdir().unwrap();
    let (src, rep) = (t.path().join("src"), t.path().join("rep"));
    let (s, r) = (src.display(), rep.display());
    sh(&format!(
        "mkdir -p {s}/d && echo 1 > {s}/d/f && cp -a {s} {r}"
    ));
    let want = replica_digest(&src).unwrap();
    let all = entries(&src);
    prove(&rep, &all, &want);

    // Not sealed (the listing never ended): not used.
    let sp = DiffSession::new_sparse(&rep).unwrap();
    drop(sp);
    assert!(take(&rep).is_none());
    // A comparison that is not sparse drops it.
    let mut sp = DiffSession::new_sparse(&rep).unwrap();
    sp.diff(&batch(1, vec![])).unwrap();
    let _plain = DiffSession::new(&rep).unwrap();
    assert!(take(&rep).is_none());
    // The last proven ledger replaced since (a snapshot's carry-over
    // writes a new file): not used.
    let mut sp = DiffSession::new_sparse(&rep).unwrap();
    sp.diff(&batch(1, vec![])).unwrap();
    let prev = ledger::prev_path_for(&rep);
    let copy = prev.with_extension("copy");
    std::fs::copy(&prev, &copy).unwrap();
    std::fs::rename(&copy, &prev).unwrap();
    assert!(take(&rep).is_none());
}

#[test]
fn entries_read_again_at_the_end_are_trusted_by_the_next_mirror() {
    let t = tempfile::tempdir().unwrap();
    let (src, rep) = (t.path().join("src"), t.path().join("rep"));
    let (s, r) = (src.display(), rep.display());
    sh(&format!(
        "mkdir -p {s}/d && for i in 1 2 3; do echo $i > {s}/d/f$i; done && cp -a {s} {r}"
    ));
    let want = replica_digest(&src).unwrap();
    let all = entries(&src);
    prove(&rep, &all, &want);

    // The source's d/f1 changes; the sparse listing names it (it differs:
    // its record is to be read again), then the mirror brings it over.
    sh(&format!("echo changed > {s}/d/f1"));
    let want = replica_digest(&src).unwrap();
    let all = entries(&src);
    let listed: Vec<Entry> = all
        .iter()
        .filter(|e| ["", "d", "d/f1"].contains(&&*String::from_utf8_lossy(&e.path)))
        .cloned()
        .collect();
    let mut sp = DiffSession::new_sparse(&rep).unwrap();
    let d = sp.diff(&batch(1, listed)).unwrap();
    assert_eq!(d.items.len(), 1, "{:?}", d.items);
    sp.diff(&batch(2, vec![])).unwrap();
    sh(&format!("cp -a {s}/d/f1 {r}/d/f1 && touch -r {s}/d {r}/d"));
    let skip = take(&rep).unwrap();
    let (got, reread, _) = fold(&rep, &skip);
    assert_eq!(got, want);
    assert!(reread >= 1, "d/f1 is read again at this end");
    assert_eq!(
        check_and_keep_with(&rep, &want, ledger::Hints::skip(&skip))
            .unwrap()
            .0,
        want
    );
    // The next mirror (nothing changed) reads nothing again: the end's
    // ledger recorded d/f1 as it read it.
    let skip = sparse_listing(&rep, vec![]);
    assert!(skip.failed.is_empty(), "{:?}", skip.failed);
    let (got, reread, pre) = fold(&rep, &skip);
    assert_eq!((got.as_str(), reread), (want.as_str(), 0));
    assert_eq!(pre, all.len() as u64);
}

#[test]
fn the_open_directories_find_what_a_resolution_beneath_the_root_finds() {
    let t = tempfile::tempdir().unwrap();
    let rep = t.path().join("rep");
    let r = rep.display();
    sh(&format!(
        "mkdir -p {r}/a/b/c {r}/a-b {r}/ab {r}/b && echo f > {r}/a/b/c/f && echo g > {r}/a/b/g \
         && echo h > {r}/a/h && echo x > {r}/ab/x && echo y > {r}/a-b/y && echo z > {r}/b/z \
         && ln -s a {r}/s && ln -s {} {r}/out",
        t.path().display()
    ));
    let mut listed: Vec<Vec<u8>> = entries(&rep).into_iter().map(|e| e.path).collect();
    assert!(listed.len() >= 14, "{listed:?}");
    // Through a symlink, absent, or below a file: nothing is found.
    for p in ["s/h", "s/b/g", "out/rep", "a/h/x", "nope/x", "a/b/nope"] {
        listed.push(p.as_bytes().to_vec());
    }
    let check = |paths: &[Vec<u8>]| {
        let mut dirs = Dirs::new(&rep).unwrap();
        let mut beneath = crate::mirror::beneath::Beneath::new(&rep).unwrap();
        for p in paths {
            let want = beneath.change_stamp(p);
            assert_eq!(dirs.stamp(p), want, "{}", String::from_utf8_lossy(p));
            if p.starts_with(b"s/") || p.starts_with(b"out/") || p.starts_with(b"nope") {
                assert_eq!(want, None);
            }
        }
        // Paths that are not plain: never found.
        for p in ["a/../a/h", "a//h", "/a", "a/", "a/./h", ".."] {
            assert_eq!(dirs.stamp(p.as_bytes()), None, "{p}");
        }
    };
    // In tree order (as the ledger gives them), and in any other order.
    check(&listed);
    listed.reverse();
    check(&listed);
    listed.sort_by_key(|p| p.len());
    check(&listed);
    assert_eq!(
        Dirs::new(&rep).unwrap().stamp(b""),
        crate::mirror::beneath::Beneath::new(&rep)
            .unwrap()
            .change_stamp(b""),
        "the root"
    );
}

#[test]
fn the_early_checks_reader_gives_every_records_stamp_and_refuses_a_damaged_ledger() {
    let t = tempfile::tempdir().unwrap();
    let (src, rep) = (t.path().join("src"), t.path().join("rep"));
    let (s, r) = (src.display(), rep.display());
    sh(&format!(
        "mkdir -p {s}/d/deep {s}/e && for i in 1 2 3 4 5 6; do echo $i > {s}/d/f$i; done && \
         echo x > {s}/e/x && echo y > {s}/d/deep/y && ln {s}/e/x {s}/d/link && cp -a {s} {r}"
    ));
    let want = replica_digest(&src).unwrap();
    let all = entries(&src);
    prove(&rep, &all, &want);
    let lp = ledger::prev_path_for(&rep);
    let mut records = Vec::new();
    let mut p = Prev::open(&lp).unwrap();
    while let Some((path, rec)) = p.next_entry().unwrap() {
        records.push((path, rec.map(|r| (r.ino, r.ctime))));
    }
    let mut stamps = Vec::new();
    let mut p = Prev::open(&lp).unwrap();
    let mut path = Vec::new();
    while let Some(stamp) = p.next_stamp(&mut path).unwrap() {
        stamps.push((path.clone(), stamp));
    }
    assert_eq!(stamps, records);
    assert_eq!(records.len(), all.len());
    let checked = check(Prev::open(&lp).unwrap(), Dirs::new(&rep).unwrap()).unwrap();
    assert_eq!(
        (checked.records, checked.failed.len()),
        (all.len() as u64, 0)
    );

    // Cut in the middle of its records: the check gives nothing.
    let bytes = std::fs::read(&lp).unwrap();
    let cut = t.path().join("cut");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    assert!(check(Prev::open(&cut).unwrap(), Dirs::new(&rep).unwrap()).is_none());
}
