//! A file written in pieces from its start is checked from the hash of
//! those pieces, without a read, while it is as the last piece left it;
//! otherwise it is read back as before.

use super::patched_tests::{check, data, target};
use super::*;
use standin_builder::hash::content_digest;

/// The pieces of `content` as an open mirror sends them: `Create` of the
/// empty file, then `WriteExtent`s in order, the last with the digest.
fn pieces(path: &str, content: &[u8], piece: usize) -> Vec<Record> {
    let mut e = super::file_tests::file_entry(path, 0o644, b"");
    e.size = 0;
    let mut out = vec![Record::Create(e)];
    let n = content.len().div_ceil(piece);
    for (i, c) in content.chunks(piece).enumerate() {
        out.push(Record::WriteExtent {
            path: path.as_bytes().to_vec(),
            offset: (i * piece) as u64,
            data: c.to_vec(),
            content_digest: (i + 1 == n).then(|| content_digest(content)),
        });
    }
    out
}

#[test]
fn pieces_written_in_order_are_checked_without_a_read() {
    let (d, mut t) = target();
    let content = data(9_000_000, 13);
    for r in pieces("big", &content, 1 << 20) {
        t.apply(&r).unwrap();
    }
    assert_eq!(check(&mut t, "big"), Some(content_digest(&content)));
    let r = t.check_reads();
    assert_eq!((r.streamed, r.whole), (1, 0), "{r:?}");
    assert_eq!(std::fs::read(d.path().join("root/big")).unwrap(), content);
    // Remembered under its stamp, as a file read for its digest is.
    let st = rustix::fs::stat(d.path().join("root/big")).unwrap();
    let stamp = crate::digest_cache::stamp_of_stat(&st).unwrap();
    assert_eq!(
        crate::digest_cache::lookup_stamp(&stamp),
        Some(content_digest(&content))
    );
}

#[test]
fn a_file_changed_behind_the_pieces_is_read_back_and_its_real_digest_given() {
    let (d, mut t) = target();
    let content = data(3_000_000, 17);
    let recs = pieces("big", &content, 1 << 20);
    let (last, first) = recs.split_last().unwrap();
    for r in first {
        t.apply(r).unwrap();
    }
    // Someone writes into the file between two pieces (same size).
    let p = d.path().join("root/big");
    std::thread::sleep(std::time::Duration::from_millis(10));
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.write_all_at(b"XX", 100).unwrap();
    }
    t.apply(last).unwrap();
    let mut changed = content.clone();
    changed[100..102].copy_from_slice(b"XX");
    assert_eq!(check(&mut t, "big"), Some(content_digest(&changed)));
    let r = t.check_reads();
    assert_eq!((r.streamed, r.whole), (0, 1), "{r:?}");

    // Changed after the last piece: read back too.
    let other = data(2_500_000, 19);
    for r in pieces("other", &other, 1 << 20) {
        t.apply(&r).unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(10));
    std::fs::OpenOptions::new()
        .append(true)
        .open(d.path().join("root/other"))
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"tail"))
        .unwrap();
    let mut grown = other.clone();
    grown.extend_from_slice(b"tail");
    assert_eq!(check(&mut t, "other"), Some(content_digest(&grown)));
    let r = t.check_reads();
    assert_eq!((r.streamed, r.whole), (0, 2), "{r:?}");
}
