//! The fold that merges the apply ledger into the comparison's as it reads
//! both ([`super::fold`]) against the merge written to a file and folded
//! after ([`super::merge_counted`], then [`ledger::digest_into`]).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use standin_builder::entry::Entry;

use super::{fold, merge_counted, Log, Recorded};
use crate::apply::applied::Applied;
use crate::mirror::ledger::tests::compare;
use crate::mirror::ledger::{self, Hints, Outcome};
use crate::mirror::tests::sh;
use crate::mirror::{check_and_keep_applied, replica_digest};

/// The source's entries in tree order and its root digest.
fn scan(src: &Path) -> (Vec<Entry>, String) {
    super::tests::scan(src)
}

/// A source, and a replica that was an older copy of it: a file changed,
/// a file renamed (`a/old` → `a/new`), a file added deep down, a file the
/// source deleted (`d/extra`), hard links and a symlink left as they were.
fn trees(t: &Path) -> (PathBuf, PathBuf) {
    let (src, rep) = (t.join("src"), t.join("rep"));
    std::fs::create_dir_all(src.join("a/sub")).unwrap();
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::create_dir_all(src.join("e")).unwrap();
    for i in 0..10 {
        std::fs::write(src.join(format!("a/f{i}")), format!("file {i}")).unwrap();
    }
    std::fs::write(src.join("a/sub/x"), "x").unwrap();
    std::fs::write(src.join("a/old"), "renamed").unwrap();
    std::fs::write(src.join("d/keep"), "keep").unwrap();
    std::fs::write(src.join("d/extra"), "extra").unwrap();
    std::fs::write(src.join("e/l1"), "linked").unwrap();
    std::fs::hard_link(src.join("e/l1"), src.join("e/l2")).unwrap();
    std::os::unix::fs::symlink("../a/f1", src.join("e/sym")).unwrap();
    sh(&format!("cp -a {} {}", src.display(), rep.display()));
    // The source moves on.
    let s = src.display();
    sh(&format!(
        "printf 'FILE 3 changed' > {s}/a/f3 && printf 'FILE 5 changed' > {s}/a/f5 \
         && mv {s}/a/old {s}/a/new && echo added > {s}/a/sub/added && rm {s}/d/extra \
         && touch -d 2021-01-01 {s}/a {s}/a/sub {s}/d"
    ));
    (src, rep)
}

/// What the apply records of the replica's entry at `path` (the source's
/// `e`), read back now.
fn applied_of(rep: &Path, e: &Entry, count: bool) -> Applied {
    let st = rustix::fs::lstat(rep.join(std::str::from_utf8(&e.path).unwrap())).unwrap();
    let sha: Option<[u8; 32]> = e
        .sha256
        .as_ref()
        .map(|h| hex::decode(h).unwrap().try_into().unwrap());
    let mut a = crate::apply::applied::of(e, &st, sha.as_ref());
    assert!(a.record.is_some(), "{} is recorded", e.display_path());
    a.count = count;
    a
}

/// The mirror's changes made on the replica (as the sets would) and the
/// apply ledger of them: `a/f5` changed without a record (read again at
/// the end), directory metadata recorded late (out of tree order), `d`
/// counted (it existed before the mirror). `before_d`: run on the replica
/// just before `d` is read back.
fn apply(src: &Path, rep: &Path, entries: &[Entry], before_d: &str) -> Recorded {
    let (s, r) = (src.display(), rep.display());
    sh(&format!(
        "rm {r}/a/old {r}/d/extra && cp -a {s}/a/new {s}/a/f3 {s}/a/f5 {r}/a/ \
         && cp -a {s}/a/sub/added {r}/a/sub/ && touch -r {s}/a/sub {r}/a/sub \
         && touch -r {s}/a {r}/a"
    ));
    sh(&before_d
        .replace("{r}", &r.to_string())
        .replace("{s}", &s.to_string()));
    sh(&format!("touch -r {s}/d {r}/d"));
    let e = |p: &str| {
        entries
            .iter()
            .find(|e| e.path == p.as_bytes())
            .unwrap_or_else(|| panic!("{p} in the source"))
    };
    let mut log = Log::start(rep, "m", 1);
    log.add(
        1,
        Some(vec![
            applied_of(rep, e("a/f3"), false),
            applied_of(rep, e("a/new"), false),
            applied_of(rep, e("a/sub/added"), false),
            // Late: the walk left these directories after their entries.
            applied_of(rep, e("a/sub"), false),
            applied_of(rep, e("a"), true),
            applied_of(rep, e("d"), true),
        ]),
    );
    log.finish("m", 1).expect("every set recorded")
}

/// An apply ledger's file and late records.
type Saved = (Vec<u8>, Late);
type Late = HashMap<Vec<u8>, Option<ledger::Record>>;
/// What a fold gave (digest or why not, reused, read again) and the
/// ledger it wrote.
type Way = ((String, u64, u64), Option<Vec<u8>>);
/// A way to damage an apply ledger.
type Damage = Box<dyn Fn(&mut Vec<u8>, &mut Late)>;

fn copy(r: &Recorded) -> Saved {
    (std::fs::read(&r.path).unwrap(), r.late.clone())
}

fn restore(rep: &Path, saved: &Saved) -> Recorded {
    let path = super::path_for(rep);
    std::fs::write(&path, &saved.0).unwrap();
    Recorded {
        path,
        late: saved.1.clone(),
    }
}

fn summary(o: &Outcome) -> (String, u64, u64) {
    match o {
        Outcome::Digest {
            digest,
            reused,
            reread,
            ..
        } => (digest.clone(), *reused, *reread),
        Outcome::Unsure(why) => (format!("unsure: {why}"), 0, 0),
    }
}

/// The streamed fold, the merge then the fold with its counted
/// directories, and the fold of the merged ledger file that learns them
/// at its end: their outcomes and the ledgers they wrote.
fn three_ways(rep: &Path, rec: Recorded) -> Vec<Way> {
    let comparison = ledger::path_for(rep);
    let saved_ledger = std::fs::read(&comparison).unwrap();
    let saved = copy(&rec);
    let out = |n: &str| rep.with_file_name(format!("folded-{n}"));
    let read = |p: PathBuf| std::fs::read(p).ok();

    let (streamed, n) = fold(rep, rec, None, Some(&out("b"))).unwrap();
    assert_eq!(
        std::fs::read(&comparison).unwrap(),
        saved_ledger,
        "the streamed fold leaves the comparison's ledger as it was"
    );
    let (n2, counted) = merge_counted(rep, restore(rep, &saved)).unwrap();
    assert_eq!(n, n2, "as many records folded as merged");
    let hints = Hints {
        skip: None,
        count_dirs: Some(&counted),
    };
    let merged = ledger::digest_into(rep, &comparison, hints, Some(&out("a")))
        .unwrap()
        .unwrap();
    let deferred = ledger::digest_into(rep, &comparison, Hints::default(), Some(&out("c")))
        .unwrap()
        .unwrap();
    std::fs::write(&comparison, &saved_ledger).unwrap();
    restore(rep, &saved);
    vec![
        (summary(&merged), read(out("a"))),
        (summary(&streamed), read(out("b"))),
        (summary(&deferred), read(out("c"))),
    ]
}

#[test]
fn the_streamed_fold_gives_the_digest_and_ledger_of_merge_then_fold() {
    let t = tempfile::tempdir().unwrap();
    let (src, rep) = trees(t.path());
    let (entries, want) = scan(&src);
    compare(&rep, &entries, 4);
    let rec = apply(&src, &rep, &entries, "true");
    let saved = copy(&rec);
    assert_eq!(
        replica_digest(&rep).unwrap(),
        want,
        "the replica is mirrored"
    );
    let got = three_ways(&rep, rec);
    let (merged, streamed, deferred) = (&got[0], &got[1], &got[2]);
    assert_eq!(merged.0 .0, want, "merge then fold proves the mirror");
    assert_eq!(
        streamed, merged,
        "the streamed fold: same digest, counts, ledger"
    );
    assert_eq!(deferred, merged, "counted directories learnt at the end");
    let (_, reused, reread) = merged.0;
    assert_eq!(reused + reread, entries.len() as u64);
    assert!(
        (1..=3).contains(&reread),
        "a/f5 (changed without a record) is read again, the apply's records hold: {reread}"
    );
    assert!(merged.1.as_ref().is_some_and(|l| l.len() > 100));

    // The end keeps the streamed fold's ledger for the next mirror, and
    // the check went by the ledger.
    let (got, check) =
        check_and_keep_applied(&rep, &want, Hints::default(), Some(restore(&rep, &saved))).unwrap();
    assert_eq!(got, want);
    assert_eq!((check.by.as_str(), check.reread), ("ledger", reread));
    assert_eq!(
        std::fs::read(ledger::prev_path_for(&rep)).ok(),
        streamed.1,
        "the next mirror's ledger is the streamed fold's"
    );
    assert!(!ledger::path_for(&rep).exists());
}

#[test]
fn a_counted_directory_whose_record_held_is_counted_by_the_streamed_fold() {
    let t = tempfile::tempdir().unwrap();
    let (src, rep) = trees(t.path());
    let (entries, want) = scan(&src);
    compare(&rep, &entries, 4);
    // A path nobody listed appears in `d` before the apply reads `d` back:
    // its record holds, and only counting its entries finds the path.
    let rec = apply(&src, &rep, &entries, "echo x > {r}/d/sneaky");
    assert_ne!(replica_digest(&rep).unwrap(), want);
    for (i, ((digest, ..), out)) in three_ways(&rep, rec).into_iter().enumerate() {
        assert!(
            digest.starts_with("unsure") && digest.contains("holds 2 entries, 1 listed"),
            "way {i}: {digest}"
        );
        assert!(out.is_none(), "way {i}: no ledger is kept");
    }
}

#[test]
fn an_apply_ledger_that_cannot_be_used_falls_back() {
    let t = tempfile::tempdir().unwrap();
    let (src, rep) = trees(t.path());
    let (entries, want) = scan(&src);
    compare(&rep, &entries, 4);
    let rec = apply(&src, &rep, &entries, "true");
    let saved = copy(&rec);
    let saved_ledger = std::fs::read(ledger::path_for(&rep)).unwrap();
    let len = saved.0.len();
    let damage: Vec<(&str, Damage)> = vec![
        ("truncated end", Box::new(move |b, _| b.truncate(len - 3))),
        ("bad magic", Box::new(|b, _| b[0] = b'X')),
        ("record tag", Box::new(|b, _| b[5] = 7)),
        (
            "a late record nothing lists",
            Box::new(|_, late| {
                late.insert(b"zz/none".to_vec(), None);
            }),
        ),
    ];
    for (what, damage) in damage {
        let (mut bytes, mut late) = saved.clone();
        damage(&mut bytes, &mut late);
        std::fs::write(ledger::path_for(&rep), &saved_ledger).unwrap();
        let _ = std::fs::remove_file(ledger::prev_path_for(&rep));
        let rec = restore(&rep, &(bytes.clone(), late.clone()));
        assert!(fold(&rep, rec, None, None).is_err(), "{what}: not folded");
        let rec = restore(&rep, &(bytes, late));
        let (got, check) =
            check_and_keep_applied(&rep, &want, Hints::default(), Some(rec)).unwrap();
        assert_eq!(got, want, "{what}");
        // The comparison's ledger alone: every changed entry read again.
        assert_eq!(check.by, "ledger", "{what}: {check:?}");
        assert!(check.reread >= 6, "{what}: {check:?}");
        assert!(ledger::prev_path_for(&rep).exists(), "{what}: kept");
    }

    // An apply ledger whose record lies (another content digest under the
    // entry's inode and change time): the fold differs, the walk decides.
    std::fs::write(ledger::path_for(&rep), &saved_ledger).unwrap();
    let mut lying = restore(&rep, &saved);
    let mut r = lying
        .late
        .remove(b"a".as_slice())
        .flatten()
        .expect("a's late record");
    let last = r.canonical.len() - 1;
    r.canonical[last] ^= 1;
    lying.late.insert(b"a".to_vec(), Some(r));
    let (got, check) = check_and_keep_applied(&rep, &want, Hints::default(), Some(lying)).unwrap();
    assert_eq!(got, want);
    assert_eq!(check.by, "walk", "{check:?}");
}
