//! A difference mirror that changes a few blocks of a large file: the
//! target answers the file's block digests from the block values its digest
//! cache kept (BLAKE3 chaining values; `block_reads=0` in its debug log),
//! its check after the patch reads only the patched blocks
//! (`checked_partly`), and the replica still equals the source. Over
//! loopback; needs root.

mod protect_support;

use std::path::Path;
use std::process::Command;

use protect_support::common::{minimal_system, require_root, standin, tempdir};
use protect_support::*;

fn protect(d: &Path, daemon: &Daemon, s: &Sides, root: &Path) -> serde_json::Value {
    let out = standin()
        .args(["protect", "--target", &daemon.addr, "--identity"])
        .arg(&s.sid)
        .args(["--trust", &s.tf, "--root"])
        .arg(root)
        .arg("--state-dir")
        .arg(d.join("agent"))
        .args(["--source-id", "web1", "--once", "--json"])
        .output()
        .unwrap();
    let json = protect_json(&out);
    assert!(
        out.status.success(),
        "protect failed:\n{json}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(json["mirror"]["complete"], true, "{json}");
    json
}

/// Sum of `key=N` over the daemon log's lines saying `what`.
fn sum(log: &str, what: &str, key: &str) -> u64 {
    log.lines()
        .filter(|l| l.contains(what))
        .filter_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
                .and_then(|v| v.parse::<u64>().ok())
        })
        .sum()
}

#[test]
fn a_few_blocks_changed_in_a_large_file_are_checked_without_reading_it_whole() {
    require_root();
    let d = tempdir();
    let src = d.path().join("src");
    minimal_system(&src);
    std::fs::create_dir_all(src.join("var/lib")).unwrap();
    let mut big: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(src.join("var/lib/big"), &big).unwrap();
    let s = Sides::new(d.path(), &src, true);
    let dlog = d.path().join("d.log");
    // The daemon's debug lines of the apply (through `env`: the helper
    // sets STANDIN_LOG=info for the command it starts).
    let mut env = Command::new("env");
    env.arg("STANDIN_LOG=standin_staging=debug")
        .arg(standin().get_program());
    let daemon = Daemon::start_cmd(env, &s.state, &s.tid, &s.sf, "127.0.0.1:0", &s.troot, &dlog);

    protect(d.path(), &daemon, &s, &src);
    assert_same_tree(&src, &replica(&s.state, "web1"));

    // Three 4 KiB writes in place, twice: each difference mirror sends a
    // few blocks and the target checks them from its kept block values.
    for round in 0..2u8 {
        std::thread::sleep(std::time::Duration::from_millis(20));
        {
            use std::os::unix::fs::FileExt;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(src.join("var/lib/big"))
                .unwrap();
            for off in [700_000usize, 3_000_123, 5_500_000] {
                let piece = vec![round + 1; 4096];
                f.write_all_at(&piece, off as u64).unwrap();
                big[off..off + 4096].copy_from_slice(&piece);
            }
        }
        let before = std::fs::read_to_string(&dlog).unwrap();
        let json = protect(d.path(), &daemon, &s, &src);
        let log = std::fs::read_to_string(&dlog).unwrap();
        let new = &log[before.len()..];
        assert_eq!(
            std::fs::read(replica(&s.state, "web1").join("var/lib/big")).unwrap(),
            big
        );
        assert_same_tree(&src, &replica(&s.state, "web1"));
        let partly = sum(new, "change set records applied", "checked_partly");
        let bytes = sum(new, "change set records applied", "partial_bytes");
        assert_eq!(partly, 1, "round {round}: {json}\n{new}");
        // The comparison of the second round answers the file's block
        // digests from the values the first round's check kept (the
        // first may read it: the full mirror wrote it from a file record).
        let reads = sum(new, "mirror comparison: batch answered", "block_reads");
        if round == 1 {
            assert_eq!(reads, 0, "{new}");
        } else {
            assert!(reads <= 1, "{new}");
        }
        // A 6 MB file has 4 KiB blocks: each write touches at most 2.
        assert!(
            bytes <= 6 * 4096,
            "round {round}: read {bytes} bytes\n{new}"
        );
        let sent = json["mirror"]["bytes_sent"].as_u64().unwrap();
        assert!(sent < 200_000, "round {round}: {sent} bytes sent\n{json}");
    }
}
