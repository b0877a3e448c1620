use super::*;
use crate::entry::Xattr;
use std::collections::BTreeMap;

fn entry(path: &str, kind: Kind) -> Entry {
    let mut xattrs = BTreeMap::new();
    xattrs.insert(Xattr(b"user.k".to_vec()), Xattr(vec![0, 1, 0xff]));
    Entry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o644,
        uid: 1,
        gid: 2,
        mtime_ns: -5,
        size: 3,
        xattrs,
        target: (kind == Kind::Symlink).then(|| b"../x".to_vec()),
        link: None,
        rdev: (kind == Kind::Char).then_some((1, 3)),
        sparse: Some(vec![(0, 4096)]),
        sha256: Some("ab".repeat(32)),
    }
}

fn sample() -> ChangeSet {
    ChangeSet {
        seq: 42,
        created_unix_ms: 1_700_000_000_000,
        records: vec![
            Record::Create(entry("dir", Kind::Dir)),
            Record::Create(entry("dir/f", Kind::File)),
            Record::WriteExtent {
                path: b"dir/f".to_vec(),
                offset: 7,
                data: b"hello".to_vec(),
                content_digest: Some([1; 32]),
            },
            Record::Truncate {
                path: b"dir/f".to_vec(),
                size: 3,
                content_digest: Some([2; 32]),
            },
            Record::SetMetadata(entry("", Kind::Dir)),
            Record::Create(entry("dir/s", Kind::Symlink)),
            Record::Create(entry("dir/c", Kind::Char)),
            Record::Rename {
                from: b"dir/f".to_vec(),
                to: b"g\xff".to_vec(),
            },
            Record::Link {
                existing: b"g\xff".to_vec(),
                new: b"h".to_vec(),
            },
            Record::Delete {
                path: b"dir".to_vec(),
            },
        ],
    }
}

/// A small deterministic PRNG (xorshift64*), enough for a bounded fuzz loop.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// A body with its checksum (a set without `File` records: every byte).
fn seal(body: &[u8]) -> Vec<u8> {
    let mut v = body.to_vec();
    v.extend_from_slice(&crate::hash::content_digest(body));
    v
}

#[test]
fn round_trips() {
    let cs = sample();
    let bytes = cs.encode().unwrap();
    assert_eq!(ChangeSet::decode(&bytes).unwrap(), cs);
}

#[test]
fn every_truncation_and_bit_flip_is_rejected() {
    let bytes = sample().encode().unwrap();
    for n in 0..bytes.len() {
        assert!(
            ChangeSet::decode(&bytes[..n]).is_err(),
            "truncated to {n} accepted"
        );
    }
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        assert!(ChangeSet::decode(&b).is_err(), "flip at {i} accepted");
    }
}

#[test]
fn truncated_bodies_with_valid_checksums_are_rejected() {
    // Defeat the checksum: re-seal every prefix of the body so the parser itself must notice.
    let bytes = sample().encode().unwrap();
    let body = &bytes[..bytes.len() - 32];
    for n in 0..body.len() {
        assert!(
            ChangeSet::decode(&seal(&body[..n])).is_err(),
            "prefix {n} accepted"
        );
    }
    let mut longer = body.to_vec();
    longer.push(0);
    assert_eq!(
        ChangeSet::decode(&seal(&longer)),
        Err(ChangeSetError::Trailing(1))
    );
}

#[test]
fn random_garbage_never_panics_or_allocates_wildly() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    let good = sample().encode().unwrap();
    let body = &good[..good.len() - 32];
    for round in 0..5000 {
        let len = (rng.next() % 600) as usize;
        let mut b: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        if round % 2 == 0 && b.len() >= HEADER {
            // A valid header with a random body: the parser has to work through it.
            b[..HEADER].copy_from_slice(&body[..HEADER]);
        }
        if round % 3 == 0 {
            // Mutate a valid body in a few places, keeping the checksum valid.
            b = body.to_vec();
            for _ in 0..(1 + rng.next() % 4) {
                let i = (rng.next() as usize) % b.len();
                b[i] = rng.next() as u8;
            }
        }
        let _ = ChangeSet::decode(&seal(&b));
        let _ = ChangeSet::decode(&b);
    }
}

#[test]
fn hostile_lengths_are_refused() {
    let mut body = Vec::new();
    body.extend_from_slice(MAGIC);
    body.extend_from_slice(&[VERSION, 0, 0, 0]);
    body.extend_from_slice(&1u64.to_be_bytes());
    body.extend_from_slice(&0u64.to_be_bytes());
    body.extend_from_slice(&u32::MAX.to_be_bytes());
    assert!(matches!(
        ChangeSet::decode(&seal(&body)),
        Err(ChangeSetError::TooLong { .. })
    ));
    body.truncate(body.len() - 4);
    body.extend_from_slice(&1u32.to_be_bytes());
    body.push(7); // Delete
    body.extend_from_slice(&u32::MAX.to_be_bytes());
    let e = ChangeSet::decode(&seal(&body)).unwrap_err().to_string();
    assert!(e.contains("path length"), "{e}");
}

#[test]
fn unsafe_paths_are_refused() {
    for bad in [
        &b"/etc/passwd"[..],
        b"../x",
        b"a/../../x",
        b"a//b",
        b"./a",
        b"a/.",
        b"a\0b",
        b"",
    ] {
        let cs = ChangeSet {
            seq: 1,
            created_unix_ms: 0,
            records: vec![Record::Delete { path: bad.to_vec() }],
        };
        let bytes = cs.encode().unwrap();
        let e = ChangeSet::decode(&bytes).unwrap_err();
        assert!(
            matches!(e, ChangeSetError::BadRecord { index: 0, .. }),
            "{bad:?}: {e}"
        );
    }
    assert!(check_path(b"", true).is_ok());
    assert!(check_path(b"a/b..c/.d", false).is_ok());
}

#[test]
fn metadata_digest_tracks_metadata_only() {
    let a = entry("x", Kind::File);
    let mut b = a.clone();
    b.path = b"y".to_vec();
    b.size = 99;
    assert_eq!(metadata_digest(&a), metadata_digest(&b));
    b.mode = 0o600;
    assert_ne!(metadata_digest(&a), metadata_digest(&b));
}

fn file_record(path: &str, data: &[u8]) -> Record {
    let mut e = entry(path, Kind::File);
    e.sparse = None;
    e.sha256 = None;
    e.size = data.len() as u64;
    e.mode = 0o4755;
    Record::File {
        entry: e,
        data: data.to_vec(),
        content_digest: crate::hash::content_digest(data),
    }
}

#[test]
fn every_set_is_version_4_and_sha256_versions_are_refused_by_name() {
    let mut cs = sample();
    let plain = cs.encode().unwrap();
    assert_eq!(plain[4], 4, "no file record: version 4 too");
    // The checksum is the BLAKE3-256 of every byte before it.
    let (body, sum) = plain.split_at(plain.len() - 32);
    assert_eq!(sum, crate::hash::content_digest(body));
    assert_ne!(sum, &Sha256::digest(body)[..]);
    cs.records.push(file_record("dir/whole", b"whole content"));
    cs.records.push(file_record("empty", b""));
    let bytes = cs.encode().unwrap();
    assert_eq!(bytes[4], 4);
    assert_eq!(ChangeSet::decode(&bytes).unwrap(), cs);
    assert_eq!(cs.data_len(), 5 + 13);
    // Versions 1 to 3 (sha256 digests) are refused, even with a valid
    // sha256 checksum, naming the version and the fix.
    for v in 1..=3u8 {
        let mut old = plain.clone();
        old[4] = v;
        let old_body = &old[..old.len() - 32];
        let mut sealed = old_body.to_vec();
        sealed.extend_from_slice(&Sha256::digest(old_body));
        let e = ChangeSet::decode(&sealed).unwrap_err();
        assert_eq!(e, ChangeSetError::OldDigests(v));
        let e = e.to_string();
        assert!(
            e.contains(&format!("version {v}"))
                && e.contains("sha256")
                && e.contains("same standin version"),
            "{e}"
        );
    }
    // A later version is refused with a hint.
    let mut v5 = bytes.clone();
    v5[4] = 5;
    let e = ChangeSet::decode(&seal(&v5[..v5.len() - 32]))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("version 5") && e.contains("same standin version"),
        "{e}"
    );
}

#[test]
fn the_checksum_covers_everything_but_file_data() {
    let mut cs = sample();
    cs.records.insert(0, file_record("a/first", b"first data"));
    cs.records.push(file_record("dir/whole", b"whole content"));
    let bytes = cs.encode().unwrap();
    assert_eq!(bytes[4], 4);
    // Where each file's data sits.
    let find = |needle: &[u8]| {
        bytes
            .windows(needle.len())
            .position(|w| w == needle)
            .unwrap()
    };
    let data = [
        (find(b"first data"), 10usize),
        (find(b"whole content"), 13usize),
    ];
    let in_data = |i: usize| data.iter().any(|&(at, n)| i >= at && i < at + n);
    for i in 0..bytes.len() {
        let mut b = bytes.clone();
        b[i] ^= 0x10;
        match ChangeSet::decode(&b) {
            Err(_) => assert!(
                !in_data(i),
                "a flip in file data at {i} was refused at decode"
            ),
            Ok(got) => {
                // Only the data of a File record may change unnoticed by the
                // checksum; its own content digest then no longer matches,
                // and the target refuses the record before writing anything.
                assert!(in_data(i), "flip at {i} accepted");
                let bad = got.records.iter().any(|r| match r {
                    Record::File {
                        data,
                        content_digest,
                        ..
                    } => crate::hash::content_digest(data) != *content_digest,
                    _ => false,
                });
                assert!(bad, "flip at {i}: every file still matches its digest");
            }
        }
    }
    for n in 0..bytes.len() {
        assert!(
            ChangeSet::decode(&bytes[..n]).is_err(),
            "truncated to {n} accepted"
        );
    }
}

#[test]
fn hostile_file_records_are_refused() {
    let base = |records: Vec<Record>| ChangeSet {
        seq: 1,
        created_unix_ms: 0,
        records,
    };
    // Size that does not match the data, a hard link, a sparse map, a
    // directory: refused at decode.
    let mut bad = Vec::new();
    if let Record::File {
        mut entry,
        data,
        content_digest,
    } = file_record("f", b"abc")
    {
        let mut e = entry.clone();
        e.size = 4;
        bad.push(Record::File {
            entry: e,
            data: data.clone(),
            content_digest,
        });
        let mut e = entry.clone();
        e.link = Some(b"g".to_vec());
        bad.push(Record::File {
            entry: e,
            data: data.clone(),
            content_digest,
        });
        let mut e = entry.clone();
        e.sparse = Some(vec![(0, 3)]);
        bad.push(Record::File {
            entry: e,
            data: data.clone(),
            content_digest,
        });
        entry.kind = Kind::Dir;
        bad.push(Record::File {
            entry,
            data,
            content_digest,
        });
    }
    for r in bad {
        let bytes = base(vec![r.clone()]).encode().unwrap();
        let e = ChangeSet::decode(&bytes).unwrap_err().to_string();
        assert!(e.contains("plain regular file"), "{r:?}: {e}");
    }
    // Unsafe paths.
    for p in ["/etc/passwd", "../x", "a//b", ""] {
        let bytes = base(vec![file_record(p, b"x")]).encode().unwrap();
        assert!(ChangeSet::decode(&bytes).is_err(), "{p}");
    }
    // An oversized data length is refused from the length alone.
    let bytes = base(vec![file_record("f", b"abc")]).encode().unwrap();
    let body = &bytes[..bytes.len() - 32];
    // data length sits right before the data and the 32-byte digest.
    let at = body.len() - 32 - 3 - 4;
    assert_eq!(&body[at..at + 4], &3u32.to_be_bytes());
    let mut big = body.to_vec();
    big[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
    let e = ChangeSet::decode(&seal(&big)).unwrap_err().to_string();
    assert!(e.contains("file data"), "{e}");
    let too_big = base(vec![Record::File {
        entry: Entry {
            size: (MAX_EXTENT_DATA + 1) as u64,
            ..entry("f", Kind::File)
        },
        data: vec![0; MAX_EXTENT_DATA + 1],
        content_digest: [0; 32],
    }]);
    assert!(too_big.encode().is_err());
}

#[test]
fn set_encoder_writes_the_documented_layout() {
    // Built by hand from the layout in the module docs, not by the encoder.
    let mut body = b"SICS\x04\0\0\0".to_vec();
    body.extend_from_slice(&9u64.to_be_bytes());
    body.extend_from_slice(&1234i64.to_be_bytes());
    body.extend_from_slice(&1u32.to_be_bytes());
    body.push(7);
    body.extend_from_slice(&3u32.to_be_bytes());
    body.extend_from_slice(b"a/b");
    let mut enc = SetEncoder::default();
    enc.push(&Record::Delete {
        path: b"a/b".to_vec(),
    })
    .unwrap();
    assert_eq!(enc.records(), 1);
    assert_eq!(enc.len(), body.len());
    assert_eq!(enc.finish(9, 1234), seal(&body));
}

#[test]
fn set_encoder_reuses_a_dirty_buffer_and_matches_encode() {
    let mut cs = sample();
    cs.records
        .push(file_record("dir/whole", b"whole file data"));
    let fresh = cs.encode().unwrap();
    // A buffer that held another, larger set: nothing of it may survive.
    let mut dirty = vec![0xa5u8; fresh.len() * 3];
    dirty.truncate(fresh.len() * 2);
    let mut enc = SetEncoder::with_buffer(dirty);
    for r in &cs.records {
        enc.push(r).unwrap();
    }
    let bytes = enc.finish(cs.seq, cs.created_unix_ms);
    assert_eq!(bytes, fresh);
    assert_eq!(ChangeSet::decode(&bytes).unwrap(), cs);
}

#[test]
fn set_encoder_drops_a_refused_record_whole() {
    let mut enc = SetEncoder::default();
    enc.push(&Record::Delete {
        path: b"ok".to_vec(),
    })
    .unwrap();
    let before = enc.len();
    let long = Record::Delete {
        path: vec![b'x'; MAX_PATH + 1],
    };
    assert!(enc.push(&long).is_err());
    assert_eq!((enc.len(), enc.records()), (before, 1));
    let cs = ChangeSet::decode(&enc.finish(1, 2)).unwrap();
    assert_eq!(
        cs.records,
        vec![Record::Delete {
            path: b"ok".to_vec()
        }]
    );
}
