use std::path::Path;

use standin_builder::changeset::{ChangeSet, Record};
use standin_builder::entry::{Entry, Kind};
use standin_builder::progress::NoProgress;
use standin_builder::scan::ScanOptions;
use standin_link::message::{MirrorEnd, MirrorEntries, MirrorMode, MirrorStart};
use standin_link::Fingerprint;

use crate::mirror::tests::sh;
use crate::mirror::DiffSession;
use crate::store::{Received, Store};

/// A source tree with every kind of entry the mirror makes: directories
/// (nested, one left empty), small and empty files, a file sent in pieces,
/// a symlink, a fifo, a hard link and an xattr.
fn source(src: &Path) {
    std::fs::create_dir_all(src.join("etc/conf.d")).unwrap();
    std::fs::create_dir_all(src.join("usr/lib/empty")).unwrap();
    std::fs::create_dir_all(src.join("var")).unwrap();
    for i in 0..12 {
        std::fs::write(src.join(format!("etc/f{i}")), format!("file {i}")).unwrap();
    }
    std::fs::write(src.join("etc/conf.d/a.conf"), "a = 1\n").unwrap();
    std::fs::write(src.join("etc/empty"), "").unwrap();
    std::fs::write(src.join("usr/lib/big"), vec![5u8; 3000]).unwrap();
    std::fs::hard_link(src.join("etc/f1"), src.join("var/f1-link")).unwrap();
    std::os::unix::fs::symlink("../etc/f2", src.join("var/sym")).unwrap();
    sh(&format!("mkfifo {}", src.join("var/fifo").display()));
    rustix::fs::setxattr(
        src.join("etc/f3").as_path(),
        "user.standin",
        b"x",
        rustix::fs::XattrFlags::empty(),
    )
    .unwrap();
    sh(&format!(
        "touch -d 2020-01-01 {0}/etc/f4 {0}/usr/lib/empty",
        src.display()
    ));
}

/// The source's entries in tree order and its root digest.
pub(super) fn scan(src: &Path) -> (Vec<Entry>, String) {
    let opts = ScanOptions {
        system_excludes: Vec::new(),
        ..ScanOptions::default()
    };
    let mut out = Vec::new();
    let s = standin_builder::manifest::scan_tree_mirror(src, &opts, &NoProgress, |e| {
        out.push(e.clone());
        Ok(())
    })
    .unwrap();
    (out, s.root_digest)
}

fn contains(dir: &[u8], path: &[u8]) -> bool {
    dir.is_empty() || (path.starts_with(dir) && path.get(dir.len()) == Some(&b'/'))
}

/// The records a full mirror sends, as the agent orders them: tree order,
/// a directory's metadata again when the walk leaves it, whole files in
/// one record, `usr/lib/big` in pieces.
fn records(src: &Path, entries: &[Entry]) -> Vec<Record> {
    let mut out = Vec::new();
    let mut open: Vec<Entry> = Vec::new();
    for e in entries {
        while let Some(d) = open.last() {
            if contains(&d.path, &e.path) {
                break;
            }
            out.push(Record::SetMetadata(open.pop().unwrap()));
        }
        let mut bare = e.clone();
        bare.sha256 = None;
        let abs = src.join(std::str::from_utf8(&e.path).unwrap());
        match e.kind {
            Kind::Dir => {
                out.push(Record::Create(bare.clone()));
                open.push(bare);
            }
            Kind::File if e.link.is_none() && e.path == b"usr/lib/big" => {
                let data = std::fs::read(&abs).unwrap();
                out.push(Record::Create(bare.clone()));
                for (i, piece) in data.chunks(1000).enumerate() {
                    let last = (i + 1) * 1000 >= data.len();
                    out.push(Record::WriteExtent {
                        path: e.path.clone(),
                        offset: (i * 1000) as u64,
                        data: piece.to_vec(),
                        content_digest: last.then(|| standin_builder::hash::content_digest(&data)),
                    });
                }
                out.push(Record::SetMetadata(bare));
            }
            Kind::File if e.link.is_none() => {
                let data = std::fs::read(&abs).unwrap();
                out.push(Record::File {
                    entry: bare,
                    content_digest: standin_builder::hash::content_digest(&data),
                    data,
                });
            }
            _ => out.push(Record::Create(bare)),
        }
    }
    while let Some(d) = open.pop() {
        out.push(Record::SetMetadata(d));
    }
    out
}

/// A store that has received the full mirror of `src` (the source's
/// empty-replica probe, then sets of `per_set` records) but not its end yet.
fn mirrored(state: &Path, src: &Path, per_set: usize) -> (Store, MirrorEnd) {
    let (entries, want) = scan(src);
    let mut s = Store::open(state).unwrap();
    s.bind_source("src", Fingerprint([0; 32])).unwrap();
    s.mirror_start(&MirrorStart {
        mirror_id: "m".into(),
        mode: MirrorMode::Full,
        total_entries: entries.len() as u64,
        total_bytes: 0,
        first_seq: 1,
    })
    .unwrap();
    // The probe: the root alone, then the end of the listing.
    let root = s.staging_root("src");
    let mut probe = DiffSession::new(&root).unwrap();
    for (batch, es) in [(1, vec![entries[0].clone()]), (2, vec![])] {
        probe
            .diff(&MirrorEntries {
                batch,
                entries: es,
                block_size: 4096,
                gone: Vec::new(),
            })
            .unwrap();
    }
    let mut seq = 0;
    for chunk in records(src, &entries).chunks(per_set) {
        seq += 1;
        let cs = ChangeSet {
            seq,
            created_unix_ms: 0,
            records: chunk.to_vec(),
        };
        let raw = cs.encode().unwrap();
        match s.receive(&raw, &cs).unwrap() {
            Received::Applied { problems, .. } => assert!(problems.is_empty(), "{problems:?}"),
            r => panic!("{r:?}"),
        }
    }
    let end = MirrorEnd {
        mirror_id: "m".into(),
        last_seq: seq,
        root_digest: Some(want),
    };
    (s, end)
}

#[test]
fn a_full_mirror_ends_by_folding_what_it_applied_without_a_walk() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    source(&src);
    // Large sets (a directory's records in the same set as its files).
    let (mut s, end) = mirrored(&t.path().join("state"), &src, 64);
    let root = s.staging_root("src");
    let entries = scan(&src).0.len() as u64;
    let done = crate::mirror::end(&mut s, "src", &end).unwrap();
    assert!(done.complete, "{:?}", done.reason);
    let check = s.state().mirror.as_ref().unwrap().root_check.clone();
    let check = check.expect("the check is recorded");
    assert_eq!(check.by, "ledger", "{check:?}");
    // Read again: only the first name of the hard link (its change time
    // moved when the second name was linked). The file sent in pieces is
    // trusted: its metadata record took the digest of the content the
    // set's end read (the same stamp).
    assert!(
        check.reread <= 1 && check.reused + check.reread == entries,
        "{check:?} for {entries} entries"
    );
    assert_eq!(
        crate::mirror::replica_digest(&root).unwrap(),
        *end.root_digest.as_ref().unwrap()
    );
    assert!(
        !super::path_for(&root).exists(),
        "the apply ledger is removed"
    );
}

#[test]
fn a_replica_changed_between_apply_and_end_is_caught() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    source(&src);
    let tamper = [
        // Same size, other content, the mtime put back.
        "printf 'FILE 9' > {r}/etc/f9 && touch -r {s}/etc/f9 {r}/etc/f9",
        // A path the source does not have, its directory's mtime put back.
        "echo x > {r}/usr/lib/empty/sneaky && touch -r {s}/usr/lib/empty {r}/usr/lib/empty",
        // A removed file, its directory's mtime put back.
        "rm {r}/etc/conf.d/a.conf && touch -r {s}/etc/conf.d {r}/etc/conf.d",
    ];
    for (i, cmd) in tamper.iter().enumerate() {
        let (mut s, end) = mirrored(&t.path().join(format!("state{i}")), &src, 4);
        let root = s.staging_root("src");
        sh(&cmd
            .replace("{r}", &root.display().to_string())
            .replace("{s}", &src.display().to_string()));
        let done = crate::mirror::end(&mut s, "src", &end).unwrap();
        assert!(!done.complete, "{cmd}: the mirror must not complete");
        let why = done.reason.unwrap_or_default();
        assert!(why.contains("differs"), "{cmd}: {why}");
        assert_eq!(
            s.root_check().map(|c| c.by.as_str()),
            Some("walk"),
            "{cmd}: the walk decided"
        );
        assert!(!s.state().mirror_complete);
    }
}
