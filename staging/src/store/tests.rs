use super::*;
use standin_builder::entry::{Entry, Kind};

pub(super) fn file(path: &str) -> Entry {
    Entry {
        path: path.as_bytes().to_vec(),
        kind: Kind::File,
        mode: 0o644,
        uid: 0,
        gid: 0,
        mtime_ns: 0,
        size: 0,
        xattrs: Default::default(),
        target: None,
        link: None,
        rdev: None,
        sparse: None,
        sha256: None,
    }
}

fn write(path: &str, data: &[u8]) -> Vec<Record> {
    vec![
        Record::Create(file(path)),
        Record::WriteExtent {
            path: path.as_bytes().to_vec(),
            offset: 0,
            data: data.to_vec(),
            content_digest: Some(standin_builder::hash::content_digest(data)),
        },
    ]
}

pub(super) fn cs(seq: u64, records: Vec<Record>) -> (ChangeSet, Vec<u8>) {
    let c = ChangeSet {
        seq,
        created_unix_ms: 0,
        records,
    };
    let raw = c.encode().unwrap();
    (c, raw)
}

fn open(dir: &Path) -> Store {
    let mut s = Store::open(dir).unwrap();
    s.bind_source("src", Fingerprint([0; 32])).unwrap();
    s
}

#[test]
fn applies_in_order_and_acks_duplicates() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    let (c1, r1) = cs(1, write("a", b"one"));
    let (c3, r3) = cs(3, write("b", b"three"));
    assert!(matches!(
        s.receive(&r3, &c3),
        Err(ReceiveError::OutOfOrder {
            expected: 1,
            got: 3
        })
    ));
    assert_eq!(
        s.receive(&r1, &c1).unwrap(),
        Received::Applied {
            seq: 1,
            problems: vec![]
        }
    );
    assert_eq!(s.receive(&r1, &c1).unwrap(), Received::Duplicate { seq: 1 });
    assert_eq!(
        std::fs::read(s.staging_root("src").join("a")).unwrap(),
        b"one"
    );
    assert_eq!(TargetState::load(d.path()).unwrap().last_applied_seq, 1);
    assert_eq!(s.backlog(), (0, 0));
    assert!(s.bind_source("other", Fingerprint([1; 32])).is_err());
    use std::os::unix::fs::PermissionsExt;
    for p in [d.path().to_path_buf(), d.path().join("staging")] {
        assert_eq!(
            std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o700
        );
    }
}

#[test]
fn restart_replays_complete_entries_and_discards_torn_ones() {
    let d = tempfile::tempdir().unwrap();
    let (c2, r2) = cs(2, write("b", b"two"));
    {
        let mut s = open(d.path());
        let (c1, r1) = cs(1, write("a", b"one"));
        s.receive(&r1, &c1).unwrap();
    }
    // A complete journal entry for 2 (crash after journaling, before apply),
    // plus a torn temp file and a corrupt entry for 3.
    let j = d.path().join("journal");
    std::fs::write(j.join(journal_name(2, "cs")), &r2).unwrap();
    std::fs::write(j.join(".x.cs.tmp"), b"half").unwrap();
    let (_, mut r3) = cs(3, write("c", b"three"));
    r3.truncate(r3.len() - 5);
    std::fs::write(j.join(journal_name(3, "cs")), &r3).unwrap();
    let s = open(d.path());
    assert_eq!(s.state().last_applied_seq, 2);
    assert_eq!(
        std::fs::read(s.staging_root("src").join("b")).unwrap(),
        b"two"
    );
    assert!(!s.staging_root("src").join("c").exists());
    assert_eq!(std::fs::read_dir(&j).unwrap().count(), 0);
    let _ = c2;
}

#[test]
fn replay_after_a_rename_checkpoint_does_not_redo_it() {
    let d = tempfile::tempdir().unwrap();
    let mut records = write("a", b"old");
    records.push(Record::Rename {
        from: b"a".to_vec(),
        to: b"b".to_vec(),
    });
    records.extend(write("a", b"new"));
    let (c1, r1) = cs(1, records);
    {
        let mut s = open(d.path());
        s.receive(&r1, &c1).unwrap();
        assert_eq!(
            std::fs::read(s.staging_root("src").join("b")).unwrap(),
            b"old"
        );
    }
    // Simulate a crash after the whole set applied but before state.json:
    // the journal entry and its progress mark are still there.
    let mut st = TargetState::load(d.path()).unwrap();
    st.last_applied_seq = 0;
    st.save(d.path()).unwrap();
    std::fs::write(d.path().join("journal").join(journal_name(1, "cs")), &r1).unwrap();
    std::fs::write(
        d.path().join("journal").join(journal_name(1, "progress")),
        b"3",
    )
    .unwrap();
    let s = open(d.path());
    assert_eq!(s.state().last_applied_seq, 1);
    let root = s.staging_root("src");
    assert_eq!(std::fs::read(root.join("b")).unwrap(), b"old");
    assert_eq!(std::fs::read(root.join("a")).unwrap(), b"new");
    assert_eq!(s.state().warning, None);
}

#[test]
fn digest_mismatch_is_a_warning() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    let mut records = write("a", b"one");
    if let Record::WriteExtent { content_digest, .. } = &mut records[1] {
        *content_digest = Some([9; 32]);
    }
    let (c1, r1) = cs(1, records);
    match s.receive(&r1, &c1).unwrap() {
        Received::Applied { problems, .. } => assert_eq!(problems.len(), 1, "{problems:?}"),
        other => panic!("{other:?}"),
    }
    assert!(s
        .state()
        .warning
        .as_deref()
        .unwrap()
        .contains("content of /a"));
}

#[test]
fn a_file_sent_in_pieces_is_verified_once_at_its_last_piece() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    let piece = |seq: u64, offset: u64, data: &[u8], digest: Option<[u8; 32]>| {
        let mut records = Vec::new();
        if seq == 1 {
            records.push(Record::Create(file("big")));
        }
        records.push(Record::WriteExtent {
            path: b"big".to_vec(),
            offset,
            data: data.to_vec(),
            content_digest: digest,
        });
        cs(seq, records)
    };
    let (c1, r1) = piece(1, 0, b"hello ", None);
    let (c2, r2) = piece(
        2,
        6,
        b"world",
        Some(standin_builder::hash::content_digest(b"hello world")),
    );
    assert_eq!(
        s.receive(&r1, &c1).unwrap(),
        Received::Applied {
            seq: 1,
            problems: vec![]
        }
    );
    assert_eq!(
        s.receive(&r2, &c2).unwrap(),
        Received::Applied {
            seq: 2,
            problems: vec![]
        }
    );
    // A wrong final digest is caught, and a digest-less piece after a
    // digest in the same set cancels the stale expectation.
    let (c3, r3) = piece(3, 0, b"J", Some([0; 32]));
    match s.receive(&r3, &c3).unwrap() {
        Received::Applied { problems, .. } => assert_eq!(problems.len(), 1),
        other => panic!("{other:?}"),
    }
    let mut records = vec![Record::WriteExtent {
        path: b"big".to_vec(),
        offset: 0,
        data: b"h".to_vec(),
        content_digest: Some([0; 32]),
    }];
    records.push(Record::WriteExtent {
        path: b"big".to_vec(),
        offset: 0,
        data: b"H".to_vec(),
        content_digest: None,
    });
    let (c4, r4) = cs(4, records);
    assert_eq!(
        s.receive(&r4, &c4).unwrap(),
        Received::Applied {
            seq: 4,
            problems: vec![]
        }
    );
    assert_eq!(
        std::fs::read(s.staging_root("src").join("big")).unwrap(),
        b"Hello world"
    );
}

pub(super) fn whole(path: &str, data: &[u8]) -> Record {
    let mut e = file(path);
    e.size = data.len() as u64;
    Record::File {
        entry: e,
        data: data.to_vec(),
        content_digest: standin_builder::hash::content_digest(data),
    }
}

#[test]
fn only_blind_sets_inside_an_open_mirror_skip_the_journal() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    let files = || cs(1, vec![whole("a", b"1"), whole("b", b"22")]);
    // Replication (no mirror): journaled.
    assert!(!s.unjournaled(&files().0));
    s.mirror_start(&MirrorStart {
        mirror_id: "m".into(),
        mode: standin_link::message::MirrorMode::Full,
        total_entries: 2,
        total_bytes: 3,
        first_seq: 1,
    })
    .unwrap();
    assert!(s.unjournaled(&files().0));
    // A set with a large file's pieces is applied again from its start
    // just as well: no journal.
    assert!(s.unjournaled(&cs(1, write("c", b"x")).0));
    // Patches of an existing file (a difference mirror's): not journaled
    // either.
    let patch = vec![
        Record::WriteExtent {
            path: b"c".to_vec(),
            offset: 4096,
            data: b"y".to_vec(),
            content_digest: None,
        },
        Record::Truncate {
            path: b"c".to_vec(),
            size: 4097,
            content_digest: Some([7; 32]),
        },
    ];
    assert!(s.unjournaled(&cs(1, patch).0));
    // A new file with content, to come in pieces: not journaled.
    let mut big = file("d");
    big.size = 10;
    assert!(s.unjournaled(&cs(1, vec![Record::Create(big)]).0));
    // A set with a rename or a hard link (applied again, it would find
    // its source moved): journaled.
    let link = Record::Link {
        existing: b"a".to_vec(),
        new: b"l".to_vec(),
    };
    assert!(!s.unjournaled(&cs(1, vec![whole("a", b"1"), link]).0));
    let rename = Record::Rename {
        from: b"a".to_vec(),
        to: b"z".to_vec(),
    };
    assert!(!s.unjournaled(&cs(1, vec![whole("a", b"1"), rename]).0));
    let (c, raw) = files();
    assert!(matches!(
        s.receive(&raw, &c).unwrap(),
        Received::Applied { seq: 1, .. }
    ));
    let root = s.staging_root("src");
    assert_eq!(std::fs::read(root.join("b")).unwrap(), b"22");
    assert_eq!(
        std::fs::read_dir(d.path().join("journal")).unwrap().count(),
        0
    );
    // Once the mirror completed, even file records are journaled.
    s.mirror_end(&MirrorEnd {
        mirror_id: "m".into(),
        last_seq: 1,
        root_digest: None,
    })
    .unwrap();
    assert!(!s.unjournaled(&cs(2, vec![whole("a", b"1")]).0));
    // After a restart the applied set is not replayed and files are whole.
    drop(s);
    let s = open(d.path());
    assert_eq!(s.state().last_applied_seq, 1);
    assert_eq!(std::fs::read(root.join("a")).unwrap(), b"1");
}

/// A mirror's hard link is a `Create` with `link` set.
fn hard_link(path: &str, first: &str) -> Record {
    let mut e = file(path);
    e.link = Some(first.as_bytes().to_vec());
    Record::Create(e)
}

#[test]
fn an_open_mirrors_set_with_a_hard_link_skips_the_journal_and_applies_again_whole() {
    use std::os::unix::fs::MetadataExt;
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    s.mirror_start(&MirrorStart {
        mirror_id: "m".into(),
        mode: standin_link::message::MirrorMode::Full,
        total_entries: 3,
        total_bytes: 2,
        first_seq: 1,
    })
    .unwrap();
    // A group whose first member is in the same set, and one in an earlier set.
    let (c1, r1) = cs(1, vec![whole("x", b"9")]);
    s.receive(&r1, &c1).unwrap();
    let (c2, r2) = cs(
        2,
        vec![whole("a", b"1"), hard_link("b", "a"), hard_link("y", "x")],
    );
    assert!(s.unjournaled(&c2));
    s.receive(&r2, &c2).unwrap();
    assert_eq!(
        std::fs::read_dir(d.path().join("journal")).unwrap().count(),
        0,
        "nothing journaled"
    );
    let root = s.staging_root("src");
    let first_a = std::fs::metadata(root.join("a")).unwrap().ino();
    // A crash before state.json recorded set 2 (it is saved lazily during
    // a mirror): the agent sends the set again, and it applies on top of
    // what it already did. `a` is written again (a new inode): `b` must
    // follow it; `y` already is `x`.
    drop(s);
    let mut st = TargetState::load(d.path()).unwrap();
    st.last_applied_seq = 1;
    st.save(d.path()).unwrap();
    let mut s = open(d.path());
    assert!(matches!(
        s.receive(&r2, &c2).unwrap(),
        Received::Applied { seq: 2, .. }
    ));
    let md = |p: &str| std::fs::symlink_metadata(root.join(p)).unwrap();
    assert_ne!(md("a").ino(), first_a, "a was written again");
    assert_eq!(md("a").ino(), md("b").ino());
    assert_eq!(md("x").ino(), md("y").ino());
    assert_eq!(md("a").nlink(), 2);
    assert_eq!(md("x").nlink(), 2);
    assert_eq!(std::fs::read(root.join("b")).unwrap(), b"1");
    assert_eq!(std::fs::read(root.join("y")).unwrap(), b"9");
}

#[test]
fn the_same_mirror_started_again_only_updates_its_totals() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    let start = |id: &str, entries, bytes| MirrorStart {
        mirror_id: id.into(),
        mode: standin_link::message::MirrorMode::Checksum,
        total_entries: entries,
        total_bytes: bytes,
        first_seq: 1,
    };
    s.mirror_start(&start("m", 0, 0)).unwrap();
    let (c, raw) = cs(1, vec![whole("a", b"1"), whole("b", b"22")]);
    s.receive(&raw, &c).unwrap();
    let applied = s.state().mirror.as_ref().unwrap().bytes_applied;
    assert!(applied > 0);
    // The source's count arrives: totals change, progress is kept.
    s.mirror_start(&start("m", 3, 30)).unwrap();
    let m = s.state().mirror.clone().unwrap();
    assert_eq!(
        (m.total_entries, m.total_bytes, m.bytes_applied),
        (3, 30, applied)
    );
    // After a restart too.
    drop(s);
    let mut s = open(d.path());
    assert_eq!(s.state().mirror.as_ref().unwrap().total_bytes, 30);
    // Another mirror starts afresh.
    s.mirror_start(&start("n", 5, 50)).unwrap();
    let m = s.state().mirror.clone().unwrap();
    assert_eq!((m.mirror_id.as_str(), m.bytes_applied), ("n", 0));
}

#[test]
fn file_digests_hashed_ahead_are_checked_record_by_record() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    let (c, raw) = cs(1, vec![whole("a", b"1"), whole("b", b"22")]);
    let mut digests = crate::store::file_data_digests(&c);
    assert_eq!(digests.len(), 2);
    assert_eq!(
        digests[1],
        Some(standin_builder::hash::content_digest(b"22"))
    );
    // A digest that does not match its record refuses that record only.
    digests[0] = Some([7; 32]);
    match s.receive_hashed(&raw, &c, &digests).unwrap() {
        Received::Applied { seq: 1, problems } => {
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(problems[0].contains("record 0"), "{problems:?}");
        }
        other => panic!("{other:?}"),
    }
    let root = s.staging_root("src");
    assert!(!root.join("a").exists());
    assert_eq!(std::fs::read(root.join("b")).unwrap(), b"22");
}

#[test]
fn an_open_mirror_writes_its_state_durably_at_most_once_per_interval() {
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    s.lazy_save_every = std::time::Duration::from_secs(3600);
    s.mirror_start(&MirrorStart {
        mirror_id: "m".into(),
        mode: standin_link::message::MirrorMode::Full,
        total_entries: 3,
        total_bytes: 3,
        first_seq: 1,
    })
    .unwrap();
    let on_disk = || {
        crate::state::TargetState::load(d.path())
            .unwrap()
            .last_applied_seq
    };
    for seq in 1..=3 {
        let (c, raw) = cs(seq, vec![whole(&format!("f{seq}"), b"x")]);
        assert!(s.unjournaled(&c));
        assert!(matches!(
            s.receive(&raw, &c).unwrap(),
            Received::Applied { .. }
        ));
    }
    // The first set was written; the next two only in memory.
    assert_eq!(s.state().last_applied_seq, 3);
    assert_eq!(on_disk(), 1);
    // A crash now: the target says 1, the agent (acked up to 3) sees it is
    // ahead and runs a difference mirror; the files are whole.
    let root = s.staging_root("src");
    assert_eq!(std::fs::read(root.join("f3")).unwrap(), b"x");
    // The mirror's end writes everything.
    s.mirror_end(&MirrorEnd {
        mirror_id: "m".into(),
        last_seq: 3,
        root_digest: None,
    })
    .unwrap();
    assert_eq!(on_disk(), 3);
    // After the mirror every set is written at once.
    let (c, raw) = cs(4, vec![whole("g", b"y")]);
    assert!(!s.unjournaled(&c));
    s.receive(&raw, &c).unwrap();
    assert_eq!(on_disk(), 4);
}

#[test]
fn a_mirror_is_recorded_complete_on_disk_only_once_its_replica_is_synced() {
    let d = tempfile::tempdir().unwrap();
    let start = |s: &mut Store, id: &str, first_seq| {
        s.mirror_start(&MirrorStart {
            mirror_id: id.into(),
            mode: standin_link::message::MirrorMode::Full,
            total_entries: 1,
            total_bytes: 1,
            first_seq,
        })
        .unwrap();
    };
    let end = |s: &mut Store, id: &str, last_seq| {
        let done = s
            .mirror_end(&MirrorEnd {
                mirror_id: id.into(),
                last_seq,
                root_digest: None,
            })
            .unwrap();
        assert!(done.complete, "{done:?}");
    };
    let on_disk = || crate::state::TargetState::load(d.path()).unwrap();
    let mut s = open(d.path());
    start(&mut s, "m1", 1);
    let (c, raw) = cs(1, vec![whole("a", b"1")]);
    s.receive(&raw, &c).unwrap();
    end(&mut s, "m1", 1);
    // Complete for the source and for status, not yet on disk.
    assert!(s.state().mirror_complete);
    assert_eq!(s.flush_pending().as_deref(), Some("m1"));
    let st = on_disk();
    assert!(!st.mirror_complete && st.mirror_flushing, "{st:?}");
    // A change set applied meanwhile is saved without the claim either.
    let (c, raw) = cs(2, vec![whole("b", b"2")]);
    s.receive(&raw, &c).unwrap();
    let st = on_disk();
    assert_eq!(st.last_applied_seq, 2);
    assert!(!st.mirror_complete, "{st:?}");
    // A daemon that stops now finds the mirror incomplete.
    drop(s);
    let mut s = open(d.path());
    assert!(!s.state().mirror_complete && !s.state().mirror_flushing);
    assert_eq!(s.flush_pending(), None);

    // The next mirror: synced -> complete on disk.
    start(&mut s, "m2", 3);
    let (c, raw) = cs(3, vec![whole("c", b"3")]);
    s.receive(&raw, &c).unwrap();
    end(&mut s, "m2", 3);
    // A report about another mirror changes nothing.
    s.mirror_flushed("m1", Ok(())).unwrap();
    assert!(!on_disk().mirror_complete);
    s.mirror_flushed("m2", Ok(())).unwrap();
    let st = on_disk();
    assert!(st.mirror_complete && !st.mirror_flushing, "{st:?}");
    assert_eq!(s.flush_pending(), None);

    // A failed sync: not complete, with a warning that says what to do.
    start(&mut s, "m3", 4);
    let (c, raw) = cs(4, vec![whole("d", b"4")]);
    s.receive(&raw, &c).unwrap();
    end(&mut s, "m3", 4);
    s.mirror_flushed("m3", Err(std::io::Error::other("EIO")))
        .unwrap();
    assert!(!s.state().mirror_complete);
    let st = on_disk();
    assert!(!st.mirror_complete && !st.mirror_flushing, "{st:?}");
    let w = st.warning.unwrap();
    assert!(
        w.contains("syncing the replica of mirror m3") && w.contains("EIO"),
        "{w}"
    );
}

/// A set whose content digests are sha256's (what a build before protocol 5
/// computed) does not pass for the BLAKE3 ones: a `File` record is refused
/// before anything is written, a piece's final digest is a problem.
#[test]
fn a_set_with_a_wrong_content_digest_is_refused() {
    use sha2::{Digest, Sha256};
    let d = tempfile::tempdir().unwrap();
    let mut s = open(d.path());
    let sha = |b: &[u8]| -> [u8; 32] { Sha256::digest(b).into() };
    let mut r = whole("f", b"file data");
    if let Record::File { content_digest, .. } = &mut r {
        *content_digest = sha(b"file data");
    }
    let (c1, r1) = cs(1, vec![r]);
    let digests = file_data_digests(&c1);
    assert_eq!(
        digests[0],
        Some(standin_builder::hash::content_digest(b"file data"))
    );
    match s.receive_hashed(&r1, &c1, &digests).unwrap() {
        Received::Applied { problems, .. } => {
            assert_eq!(problems.len(), 1, "{problems:?}");
            assert!(
                problems[0].contains("refused") && problems[0].contains("nothing written"),
                "{problems:?}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(!s.staging_root("src").join("f").exists(), "nothing written");
    let d2 = tempfile::tempdir().unwrap();
    let mut s = open(d2.path());
    let mut records = write("a", b"one");
    if let Record::WriteExtent { content_digest, .. } = &mut records[1] {
        *content_digest = Some(sha(b"one"));
    }
    let (c1, r1) = cs(1, records);
    match s.receive(&r1, &c1).unwrap() {
        Received::Applied { problems, .. } => assert_eq!(problems.len(), 1, "{problems:?}"),
        other => panic!("{other:?}"),
    }
}
