//! Replication through link trouble: the target is killed (kill -9) and
//! restarted 20 times while the workload runs, and a tiny queue overflows
//! while the target is down; both converge, nothing lost. Needs root.

mod replicate_support;

use std::os::unix::fs::FileExt;
use std::time::Duration;

use replicate_support::common::require_root;
use replicate_support::*;
use standin_agent::replicate::ReplicateOptions;

/// A few changes of every kind, varied by `i`.
fn workload(s: &std::path::Path, i: u32) {
    let d = s.join(format!("d{}", i % 5));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join(format!("f{i}")),
        format!("file {i}").repeat(i as usize + 1),
    )
    .unwrap();
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(s.join("log"))
        .unwrap();
    log.write_all_at(format!("line {i}\n").as_bytes(), 0).ok();
    std::io::Write::write_all(&mut &log, format!("line {i}\n").as_bytes()).unwrap();
    if i >= 2 {
        let old = s.join(format!("d{}/f{}", (i - 2) % 5, i - 2));
        if old.exists() {
            std::fs::create_dir_all(s.join(format!("d{}", (i + 1) % 5))).unwrap();
            std::fs::rename(&old, s.join(format!("d{}/r{}", (i + 1) % 5, i))).unwrap();
        }
    }
    if i >= 4 && i % 3 == 0 {
        let _ = std::fs::remove_file(s.join(format!("d{}/r{}", (i - 1) % 5, i - 2)));
    }
    if i % 4 == 0 {
        let _ = std::fs::remove_dir_all(s.join("moving"));
        std::fs::create_dir_all(s.join("moving/in")).unwrap();
        std::fs::write(s.join("moving/in/x"), format!("{i}")).unwrap();
        std::fs::rename(s.join("moving"), s.join(format!("moved{i}"))).unwrap();
    }
}

#[test]
fn target_killed_and_restarted_20_times_converges() {
    require_root();
    let mut h = Harness::start(|_| {}, ReplicateOptions::default());
    let s = h.src.clone();
    for i in 0..20u32 {
        workload(&s, 2 * i);
        std::thread::sleep(Duration::from_millis(150));
        h.kill_target();
        workload(&s, 2 * i + 1);
        std::thread::sleep(Duration::from_millis(400));
        h.restart_target();
    }
    h.converge();
    let st = h.sender.stats();
    assert!(st.reconnects >= 10, "the link never went down: {st:?}");
    let r = h.stop();
    assert_eq!(r.queue_full, 0, "{r:?}");
}

#[test]
fn a_full_queue_falls_back_to_a_rescan_and_converges() {
    require_root();
    let mut h = Harness::start(
        |c| {
            c.queue_max_bytes = 1;
            c.spill_dir = None;
        },
        ReplicateOptions::default(),
    );
    let s = h.src.clone();
    workload(&s, 0);
    h.converge();
    h.kill_target();
    for i in 1..12u32 {
        workload(&s, i);
        let big = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(s.join("big"))
            .unwrap();
        big.write_all_at(&[i as u8; 20000], u64::from(i) * 100_000)
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    std::thread::sleep(Duration::from_millis(500));
    let during = h.opts.counters.report();
    assert!(
        during.queue_full >= 1,
        "the queue never overflowed: {during:?}"
    );
    h.restart_target();
    h.converge();
    let r = h.stop();
    assert!(r.rescans >= 1, "no rescan after the overflow: {r:?}");
}
