use super::*;
use crate::mirror::index::Base;
use standin_builder::digest_stream::Reader as DigestReader;
use standin_builder::progress::NoProgress;

fn sh(cmd: &str) {
    let ok = std::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .status()
        .unwrap()
        .success();
    assert!(ok, "{cmd}");
}

/// A full scan (builder's), writing the index as a mirror does: its root digest.
fn full_scan(root: &Path, index: &Path) -> String {
    let mut w = Writer::create(index, "t").unwrap();
    let s = standin_builder::manifest::scan_tree_cached(
        root,
        &ScanOptions::default(),
        &NoProgress,
        DigestReader::empty(),
        None,
        false,
        None,
        |e, inode, _| w.add_scanned(e, inode),
    )
    .unwrap();
    w.commit(&base()).unwrap();
    s.summary.root_digest
}

fn base() -> Base {
    Base {
        mirror_id: "m".into(),
        target: "t".into(),
        ..Default::default()
    }
}

struct Lean {
    digest: String,
    listed: Vec<String>,
    gone: Vec<String>,
    reused: u64,
    held: usize,
}

/// The lean scan against the index; its fresh index replaces it.
fn lean(root: &Path, index: &Path) -> Lean {
    let r = Reader::open(index, "t", "t").unwrap().unwrap();
    let fresh = Writer::create(index, "t").unwrap();
    let mut listed = Vec::new();
    let mut gone = Vec::new();
    let mut emit = |b: Batch| -> Result<()> {
        assert_eq!(b.0.len(), b.1.len());
        for e in &b.0 {
            if e.kind == Kind::File && e.link.is_none() {
                assert_eq!(e.sha256.as_ref().map(String::len), Some(64));
            }
        }
        listed.extend(
            b.0.iter()
                .map(|e| String::from_utf8_lossy(&e.path).into_owned()),
        );
        gone.extend(b.2.iter().map(|g| String::from_utf8_lossy(g).into_owned()));
        Ok(())
    };
    let bs = |_: u64| 4096u64;
    let (mut sum, rest) = scan(
        root,
        &ScanOptions::default(),
        r,
        Some(fresh),
        Some(&bs),
        &NoProgress,
        &mut emit,
    )
    .unwrap();
    gone.extend(rest.iter().map(|g| String::from_utf8_lossy(g).into_owned()));
    sum.fresh.take().unwrap().commit(&base()).unwrap();
    Lean {
        digest: sum.root_digest,
        listed,
        gone,
        reused: sum.reused,
        held: sum.index_held_peak,
    }
}

/// The lean scan of `root` against the index at `index` (left as it is)
/// with `bs`-byte blocks: its batches and summary.
fn scan_with(root: &Path, index: &Path, bs: u64) -> (Vec<Batch>, LeanSummary) {
    let reader = Reader::open(index, "t", "t").unwrap().unwrap();
    let mut batches = Vec::new();
    let mut emit = |b: Batch| -> Result<()> {
        batches.push(b);
        Ok(())
    };
    let block_size = move |_: u64| bs;
    let (sum, _) = scan(
        root,
        &ScanOptions::default(),
        reader,
        None,
        Some(&block_size),
        &NoProgress,
        &mut emit,
    )
    .unwrap();
    (batches, sum)
}

#[test]
fn lean_scan_gives_the_full_scans_root_digest_and_lists_only_changes() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let index = t.path().join("state").join("mirror-index.bin");
    let r = root.display().to_string();
    // Every kind of entry: dirs, files (empty, big, sparse), symlinks, a
    // fifo, a device node, hard links, xattrs, odd names.
    sh(&format!(
        "mkdir -p {r}/a/b/c {r}/d/e {r}/gone/deep/er {r}/x && \
         echo one > {r}/a/f1 && : > {r}/a/empty && head -c 70000 /dev/urandom > {r}/a/b/big && \
         truncate -s 1M {r}/a/sparse && printf x | dd of={r}/a/sparse bs=1 seek=500000 conv=notrunc 2>/dev/null && \
         ln -s ../a/f1 {r}/d/sym && mkfifo {r}/d/fifo && mknod {r}/d/null c 1 3 && \
         echo h > {r}/d/e/h1 && ln {r}/d/e/h1 {r}/x/h2 && ln {r}/d/e/h1 {r}/x/h3 && \
         echo g > {r}/gone/deep/er/g && printf 'odd' > \"{r}/x/sp ace\\tname\" && \
         echo k > {r}/x/k && echo m > {r}/x/m && setfattr -n user.k -v v {r}/a/f1 && \
         echo l > {r}/x/linked && echo z > {r}/zz"
    ));
    let want = full_scan(&root, &index);
    let first = lean(&root, &index);
    assert_eq!(first.digest, want, "unchanged: the full scan's digest");
    assert_eq!(
        first.listed,
        ["", "d", "d/e", "d/e/h1", "x", "x/h2", "x/h3"],
        "only hard-link members (and the directories above them) are read"
    );
    assert!(first.gone.is_empty());
    assert!(first.reused > 10);
    assert_eq!(first.held, 1, "one index record held");

    // Changes of every kind.
    std::thread::sleep(std::time::Duration::from_millis(20));
    sh(&format!(
        "echo more >> {r}/a/b/big && \
         printf 'ONE\\n' > {r}/a/f1.new && touch -r {r}/a/f1 {r}/a/f1.new && cat {r}/a/f1.new > {r}/a/f1 && touch -r {r}/a/f1.new {r}/a/f1 && rm {r}/a/f1.new && \
         chmod 600 {r}/zz && setfattr -n user.k -v w {r}/x/k && \
         mv {r}/x/m {r}/a/b/c/m && rm -r {r}/gone && mkdir {r}/newdir && \
         ln -s /nowhere {r}/newdir/sym && ln {r}/x/linked {r}/a/hard && rm {r}/x/h3"
    ));
    let want = standin_builder::manifest::scan_tree_mirror(
        &root,
        &ScanOptions::default(),
        &NoProgress,
        |_| Ok(()),
    )
    .unwrap()
    .root_digest;
    let second = lean(&root, &index);
    assert_eq!(second.digest, want, "changed: still the full scan's digest");
    for p in [
        "a/b/big",
        "a/f1",
        "zz",
        "x/k",
        "a/b/c/m",
        "newdir",
        "newdir/sym",
        "a/hard",
        "x/linked",
    ] {
        assert!(
            second.listed.iter().any(|l| l == p),
            "{p} listed: {:?}",
            second.listed
        );
    }
    for p in ["a/empty", "a/sparse", "d/sym", "d/fifo", "d/null"] {
        assert!(!second.listed.iter().any(|l| l == p), "{p} not listed");
    }
    assert_eq!(second.gone, ["gone", "x/h3", "x/m"], "topmost gone paths");
    // The fresh index is the base of the next one: nothing new to list
    // but hard links.
    let third = lean(&root, &index);
    assert_eq!(third.digest, want);
    assert!(third.gone.is_empty());
    assert!(
        third.listed.iter().all(|p| [
            "", "a", "d", "d/e", "d/e/h1", "x", "x/h2", "x/linked", "a/hard"
        ]
        .contains(&p.as_str())),
        "{:?}",
        third.listed
    );
}

/// A changed file of at least `EARLY_HASH` bytes ends its chunk: its batch
/// (hashed in the fold while the walk goes on) ends with it, and what the
/// walk finds after it comes in a later batch.
#[test]
fn a_big_changed_file_ends_its_chunk_so_it_is_hashed_while_the_walk_goes_on() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let index = t.path().join("state").join("mirror-index.bin");
    let r = root.display().to_string();
    sh(&format!(
        "mkdir -p {r}/a {r}/b && echo 1 > {r}/a/one && head -c 1100000 /dev/urandom > {r}/a/big && \
         echo 2 > {r}/b/two && echo 3 > {r}/b/three"
    ));
    full_scan(&root, &index);
    sh(&format!(
        "echo more >> {r}/a/one && echo more >> {r}/a/big && echo more >> {r}/b/two"
    ));
    let batches: Vec<Vec<String>> = scan_with(&root, &index, 4096)
        .0
        .iter()
        .map(|b| {
            b.0.iter()
                .map(|e| String::from_utf8_lossy(&e.path).into_owned())
                .collect()
        })
        .collect();
    let all: Vec<&String> = batches.iter().flatten().collect();
    assert_eq!(
        all,
        ["", "a", "a/big", "a/one", "b", "b/two"],
        "{batches:?}"
    );
    let with_big = batches
        .iter()
        .find(|b| b.contains(&"a/big".into()))
        .unwrap();
    assert_eq!(
        with_big.last().map(String::as_str),
        Some("a/big"),
        "{batches:?}"
    );
    assert!(batches.len() >= 2, "{batches:?}");
}

/// Big files the index lists are hashed ahead of the walk when they
/// changed: the listing (digests and block digests) is the one the fold
/// alone makes, and the thread's digests are used.
#[test]
fn big_changed_files_hashed_ahead_give_the_folds_own_listing() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("root");
    let index = t.path().join("state").join("mirror-index.bin");
    let r = root.display().to_string();
    sh(&format!(
        "mkdir -p {r}/a {r}/m {r}/z && head -c 1200000 /dev/urandom > {r}/a/early && \
         head -c 1300000 /dev/urandom > {r}/m/same && head -c 3000000 /dev/urandom > {r}/z/late && \
         truncate -s 4M {r}/z/sparse && echo small > {r}/z/small"
    ));
    full_scan(&root, &index);
    let listed = crate::mirror::index::big::read(&index, "t", &base()).unwrap();
    let names: Vec<&[u8]> = listed.iter().map(|f| f.0.as_slice()).collect();
    assert_eq!(
        names,
        [&b"a/early"[..], b"m/same", b"z/late", b"z/sparse"],
        "big single-link files in tree order (a sparse one is left out when hashing)"
    );
    std::thread::sleep(std::time::Duration::from_millis(20));
    sh(&format!(
        "printf 'new' | dd of={r}/a/early bs=1 seek=5000 conv=notrunc 2>/dev/null && \
         echo more >> {r}/z/late && echo more >> {r}/z/small && \
         printf x | dd of={r}/z/sparse bs=1 seek=100 conv=notrunc 2>/dev/null"
    ));
    PREHASH_FIRST.store(true, std::sync::atomic::Ordering::Relaxed);
    let run = || {
        let (batches, sum) = scan_with(&root, &index, 65536);
        let out: Vec<(String, Option<String>, FileBlocks)> = batches
            .into_iter()
            .flat_map(|b| b.0.into_iter().zip(b.1))
            .map(|(e, bl)| (String::from_utf8_lossy(&e.path).into(), e.sha256, bl))
            .collect();
        (out, sum.prehashed, sum.root_digest)
    };
    let (ahead, prehashed, digest) = run();
    assert_eq!(prehashed, 2, "a/early and z/late hashed ahead: {ahead:?}");
    let late = ahead.iter().find(|x| x.0 == "z/late").unwrap();
    assert_eq!(late.2.as_ref().map(|b| (b.0, b.1.len())), Some((65536, 46)));
    // Without the list the fold hashes everything itself: the same.
    std::fs::remove_file(index.with_file_name(crate::mirror::index::big::FILE)).unwrap();
    let (alone, prehashed, digest_alone) = run();
    assert_eq!(prehashed, 0);
    assert_eq!(ahead, alone);
    assert_eq!(digest, digest_alone);
}
