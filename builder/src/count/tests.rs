use super::*;
use crate::entry::Kind;
use crate::progress::NoProgress;
use crate::scan::Scanner;
use std::fs;

/// The totals of a whole scan (what the count stands in for).
fn scanned(root: &Path, opts: &ScanOptions) -> Totals {
    let mut t = Totals::default();
    for s in Scanner::new(root, opts, &NoProgress).unwrap() {
        let s = s.unwrap();
        t.entries += 1;
        if s.entry.kind == Kind::File && s.entry.link.is_none() {
            t.bytes += s.entry.size;
        }
    }
    t
}

fn count(root: &Path, opts: &ScanOptions) -> Totals {
    count_tree(root, opts, &AtomicBool::new(false)).expect("counted")
}

#[test]
fn counts_entries_and_bytes_once_per_link_group() {
    let d = tempfile::tempdir().unwrap();
    fs::create_dir(d.path().join("a")).unwrap();
    fs::write(d.path().join("a/f"), vec![1u8; 1000]).unwrap();
    fs::hard_link(d.path().join("a/f"), d.path().join("g")).unwrap();
    std::os::unix::fs::symlink("a/f", d.path().join("s")).unwrap();
    let stop = AtomicBool::new(false);
    let t = count_tree(d.path(), &ScanOptions::default(), &stop).unwrap();
    // root, a, a/f, g, s
    assert_eq!(
        t,
        Totals {
            entries: 5,
            bytes: 1000
        }
    );
    stop.store(true, Ordering::Relaxed);
    assert_eq!(count_tree(d.path(), &ScanOptions::default(), &stop), None);
}

#[test]
fn equals_the_scanners_totals_with_excludes_links_and_specials() {
    let d = tempfile::tempdir().unwrap();
    let r = d.path();
    for dir in [
        "etc/sub",
        "var/cache/apt",
        "keep/inner",
        "home/u/.cache",
        "x/y/z",
    ] {
        fs::create_dir_all(r.join(dir)).unwrap();
    }
    let files: &[(&str, usize)] = &[
        ("etc/passwd", 300),
        ("etc/sub/big", 200_000),
        ("etc/empty", 0),
        ("var/cache/apt/pkg.deb", 5000),
        ("keep/inner/f", 77),
        ("keep/g", 11),
        ("home/u/.cache/c", 999),
        ("home/u/notes.tmp", 123),
        ("home/u/notes.txt", 456),
        ("x/y/z/deep", 1),
    ];
    for (p, n) in files {
        fs::write(r.join(p), vec![7u8; *n]).unwrap();
    }
    // A hard-link group of three (one member excluded), one of two whose
    // first member in tree order sits deeper than the second.
    fs::hard_link(r.join("etc/sub/big"), r.join("x/big-link")).unwrap();
    fs::hard_link(r.join("etc/sub/big"), r.join("home/u/big.tmp")).unwrap();
    fs::hard_link(r.join("x/y/z/deep"), r.join("a-link")).unwrap();
    std::os::unix::fs::symlink("/nowhere", r.join("etc/dangling")).unwrap();
    rustix::fs::mknodat(
        rustix::fs::CWD,
        r.join("etc/fifo"),
        FileType::Fifo,
        Mode::from_raw_mode(0o644),
        0,
    )
    .unwrap();
    // A socket: the scan leaves it out, so must the count.
    let _sock = std::os::unix::net::UnixListener::bind(r.join("etc/sock")).unwrap();
    // A sparse file counts its apparent size.
    let f = fs::File::create(r.join("etc/sparse")).unwrap();
    f.set_len(1 << 30).unwrap();

    let plain = ScanOptions::default();
    assert_eq!(count(r, &plain), scanned(r, &plain));
    let opts = ScanOptions {
        excludes: vec![
            "/var/cache/**".into(),
            "*.tmp".into(),
            "home/u/.cache".into(),
        ],
        system_excludes: vec!["/keep".into()],
        always_system_excludes: true,
        ..ScanOptions::default()
    };
    let t = count(r, &opts);
    assert_eq!(t, scanned(r, &opts));
    assert_ne!(t, count(r, &plain), "the excludes changed nothing");
    // The kept-empty directory is counted, its content is not.
    let t_no_keep = count(
        r,
        &ScanOptions {
            system_excludes: Vec::new(),
            ..opts.clone()
        },
    );
    assert_eq!(t_no_keep.entries, t.entries + 3);
    assert_eq!(t_no_keep.bytes, t.bytes + 77 + 11);
}

#[test]
fn deep_trees_are_counted_past_the_open_directories() {
    let d = tempfile::tempdir().unwrap();
    let mut p = d.path().to_path_buf();
    for i in 0..(OPEN_DEPTH + 10) {
        p.push(format!("d{i}"));
        fs::create_dir(&p).unwrap();
        fs::write(p.join("f"), [1u8; 3]).unwrap();
    }
    let opts = ScanOptions::default();
    let t = count(d.path(), &opts);
    assert_eq!(t.entries, 1 + 2 * (OPEN_DEPTH as u64 + 10));
    assert_eq!(t, scanned(d.path(), &opts));
}
