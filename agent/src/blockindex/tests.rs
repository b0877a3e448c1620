use std::os::unix::fs::{FileExt, MetadataExt};

use super::*;

fn entry_of(abs: &Path, rel: &str) -> (Entry, Ino) {
    let e = standin_builder::scan::stat_entry(abs, rel.as_bytes().to_vec(), &mut HashMap::new())
        .unwrap()
        .unwrap();
    let md = std::fs::symlink_metadata(abs).unwrap();
    (e, (md.dev(), md.ino()))
}

fn diff(ix: &mut BlockIndex, abs: &Path, fresh: bool) -> (FileDiff, Vec<Record>) {
    let (e, ino) = entry_of(abs, "f");
    let mut recs = Vec::new();
    let d = ix
        .diff_file(abs, &e, ino, fresh, &mut |r| {
            recs.push(r);
            Ok(())
        })
        .unwrap();
    (d, recs)
}

#[test]
fn a_small_write_into_a_big_sparse_file_sends_one_block() {
    let t = tempfile::tempdir().unwrap();
    let mut ix = BlockIndex::open(&t.path().join("state")).unwrap();
    let f = t.path().join("f");
    let file = std::fs::File::create(&f).unwrap();
    file.set_len(256 << 20).unwrap();
    file.write_all_at(&[7u8; 100_000], 1 << 20).unwrap();
    let (d, recs) = diff(&mut ix, &f, true);
    assert_eq!(
        d.data_bytes,
        7 * BLOCK_SIZE,
        "only the data blocks of a fresh sparse file"
    );
    assert!(
        matches!(recs.last(), Some(Record::Truncate { size, content_digest: Some(_), .. }) if *size == 256 << 20)
    );
    // Unchanged: nothing.
    let (d, recs) = diff(&mut ix, &f, false);
    assert!(!d.changed && recs.is_empty(), "{recs:?}");
    // 4 KiB in the middle: one block, and the digest matches the file.
    file.write_all_at(&[9u8; 4096], 100 << 20).unwrap();
    let (d, recs) = diff(&mut ix, &f, false);
    assert_eq!(d.data_bytes, BLOCK_SIZE);
    match &recs[0] {
        Record::WriteExtent { offset, data, .. } => {
            assert_eq!(*offset, 100 << 20);
            assert_eq!(data.len() as u64, BLOCK_SIZE);
        }
        r => panic!("{r:?}"),
    }
    let (want, _) = standin_builder::hash::content_file(&f, 256 << 20, None).unwrap();
    match recs.last().unwrap() {
        Record::Truncate {
            content_digest: Some(s),
            ..
        } => assert_eq!(hex::encode(s), want),
        r => panic!("{r:?}"),
    }
    // Shrink: no data, a truncate.
    file.set_len(50 << 20).unwrap();
    let (d, recs) = diff(&mut ix, &f, false);
    assert_eq!(d.data_bytes, 0);
    assert!(matches!(recs.as_slice(), [Record::Truncate { size, .. }] if *size == 50 << 20));
}

/// A file of one block keeps no block file: its block digest is its
/// content digest's prefix (both BLAKE3), so an unchanged one-block file
/// sends nothing and a changed one sends its block with the new digest.
#[test]
fn a_one_block_file_compares_by_its_content_digest_prefix() {
    let t = tempfile::tempdir().unwrap();
    let mut ix = BlockIndex::open(&t.path().join("state")).unwrap();
    let f = t.path().join("f");
    std::fs::write(&f, vec![5u8; 10_000]).unwrap();
    let (d, recs) = diff(&mut ix, &f, true);
    assert!(d.changed && d.data_bytes == 10_000, "{recs:?}");
    // Same content written again (new mtime and ctime): nothing to send.
    std::fs::write(&f, vec![5u8; 10_000]).unwrap();
    let (d, recs) = diff(&mut ix, &f, false);
    assert!(!d.changed && recs.is_empty(), "{recs:?}");
    let mut data = vec![5u8; 10_000];
    data[9_999] = 6;
    std::fs::write(&f, &data).unwrap();
    let (d, recs) = diff(&mut ix, &f, false);
    assert_eq!(d.data_bytes, 10_000);
    match recs.last().unwrap() {
        Record::Truncate {
            content_digest: Some(s),
            ..
        } => assert_eq!(*s, standin_builder::hash::content_digest(&data)),
        r => panic!("{r:?}"),
    }
}

#[test]
fn rename_tree_moves_descendants_only() {
    let t = tempfile::tempdir().unwrap();
    let mut ix = BlockIndex::open(t.path()).unwrap();
    for p in ["d", "d/a", "d/a/b", "d.x", "e"] {
        ix.insert(
            p.as_bytes().to_vec(),
            PathState {
                kind: Kind::Dir,
                ino: (1, p.len() as u64),
                meta: [0; 32],
                unknown: false,
            },
        );
    }
    ix.rename_tree(b"d", b"e");
    let keys: Vec<String> = ix
        .paths()
        .map(|(k, _)| String::from_utf8_lossy(k).into_owned())
        .collect();
    assert_eq!(keys, ["d.x", "e", "e/a", "e/a/b"]);
    assert_eq!(ix.remove_tree(b"e"), 3);
    assert_eq!(ix.len(), 1);
}

#[test]
fn seed_marks_entries_changed_since_the_mirror_unknown() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    std::fs::create_dir_all(root.join("d")).unwrap();
    std::fs::write(root.join("d/f"), vec![5u8; 100_000]).unwrap();
    let scan = standin_builder::scan::ScanOptions::default();
    // A mirror that started long after the files changed: all known, with blocks.
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(3600);
    let earlier = std::time::SystemTime::now() - std::time::Duration::from_secs(3600);
    let mut ix = BlockIndex::open(&t.path().join("s1")).unwrap();
    // ctime "older than the mirror start" is what makes an entry known.
    assert_eq!(ix.seed(&root, &scan, later).unwrap(), (3, 0));
    let (e, ino) = entry_of(&root.join("d/f"), "d/f");
    assert!(ix.file(ino).is_some_and(|f| f.size == 100_000));
    let mut recs = Vec::new();
    let d = ix
        .diff_file(&root.join("d/f"), &e, ino, false, &mut |r| {
            recs.push(r);
            Ok(())
        })
        .unwrap();
    assert!(!d.changed, "a seeded file is unchanged: {recs:?}");
    // A mirror that started before the files changed: all unknown.
    let mut ix = BlockIndex::open(&t.path().join("s2")).unwrap();
    assert_eq!(ix.seed(&root, &scan, earlier).unwrap(), (0, 3));
    assert!(ix.get(b"d/f").is_some_and(|s| s.unknown));
}
