//! Measure the apply of whole-file records alone: the tree at SRC as a
//! full mirror's records (directories, then each directory's files < 1 MiB
//! in runs of up to 8 MiB), applied to DST (empty, on the filesystem to
//! measure) with `apply_files`. Prints the wall and CPU time of the apply
//! calls only (the data is read beforehand, per directory).
//!
//! `cargo run --release -p standin-staging --example apply_files -- SRC DST [one|two]`

use std::path::Path;
use std::time::{Duration, Instant};

use standin_builder::changeset::Record;
use standin_builder::entry::{Entry, Kind};
use standin_staging::apply::{ApplyTarget, DirTarget};

/// This process's user + system time (`/proc/self/stat`, 10 ms ticks).
fn cpu() -> Duration {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
    Duration::from_millis(ticks * 10)
}

fn entry(rel: &str, m: &std::fs::Metadata, kind: Kind) -> Entry {
    use std::os::unix::fs::MetadataExt;
    Entry {
        path: rel.as_bytes().to_vec(),
        kind,
        mode: m.mode() & 0o7777,
        uid: m.uid(),
        gid: m.gid(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
        size: if kind == Kind::File { m.len() } else { 0 },
        xattrs: Default::default(),
        target: None,
        link: None,
        rdev: None,
        sparse: None,
        sha256: None,
    }
}

fn main() {
    let a: Vec<String> = std::env::args().collect();
    let (src, dst) = (Path::new(&a[1]), Path::new(&a[2]));
    let two = a.get(3).is_none_or(|m| m != "one");
    let mut t = DirTarget::open(dst).unwrap();
    t.write_files_on_two_threads(two);
    let (mut wall, mut cpu_used, mut files) = (Duration::ZERO, Duration::ZERO, 0u64);
    let mut stack = vec![String::new()];
    while let Some(rel) = stack.pop() {
        let dir = if rel.is_empty() {
            src.to_path_buf()
        } else {
            src.join(&rel)
        };
        let mut names: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut run = Vec::new();
        let mut bytes = 0;
        let mut flush = |t: &mut DirTarget, run: &mut Vec<Record>, files: &mut u64| {
            // Hashed beforehand, as the daemon's read-ahead thread does.
            let digests: Vec<_> = run
                .iter()
                .map(|r| match r {
                    Record::File { content_digest, .. } => Some(*content_digest),
                    _ => None,
                })
                .collect();
            let (w0, c0) = (Instant::now(), cpu());
            let res = t.apply_files(run, &digests);
            wall += w0.elapsed();
            cpu_used += cpu() - c0;
            assert!(res.iter().all(Result::is_ok), "{res:?}");
            *files += run.len() as u64;
            run.clear();
        };
        for n in names.iter().rev() {
            let r = if rel.is_empty() {
                n.clone()
            } else {
                format!("{rel}/{n}")
            };
            let m = std::fs::symlink_metadata(src.join(&r)).unwrap();
            if m.is_dir() {
                t.apply(&Record::Create(entry(&r, &m, Kind::Dir))).unwrap();
                stack.push(r);
            }
        }
        for n in &names {
            let r = if rel.is_empty() {
                n.clone()
            } else {
                format!("{rel}/{n}")
            };
            let m = std::fs::symlink_metadata(src.join(&r)).unwrap();
            if m.is_file() && m.len() < (1 << 20) && std::os::unix::fs::MetadataExt::nlink(&m) == 1
            {
                let data = std::fs::read(src.join(&r)).unwrap();
                bytes += data.len();
                run.push(Record::File {
                    entry: entry(&r, &m, Kind::File),
                    content_digest: standin_builder::hash::content_digest(&data),
                    data,
                });
                if bytes >= 8 << 20 {
                    flush(&mut t, &mut run, &mut files);
                    bytes = 0;
                }
            }
        }
        flush(&mut t, &mut run, &mut files);
    }
    println!(
        "{} files={files} apply wall={:.2}s cpu={:.2}s runs_on_two_threads={}",
        if two { "two" } else { "one" },
        wall.as_secs_f64(),
        cpu_used.as_secs_f64(),
        t.file_runs_on_two_threads()
    );
}
