//! While a mirror runs, `standin status` says Synchronizing with the
//! mirror's percent; afterwards Protected. The mirror is slowed down by
//! `--bwlimit` (which this also exercises). Over loopback; needs root.

mod protect_support;

use std::process::Stdio;

use protect_support::common::{require_root, tempdir};
use protect_support::*;

#[test]
fn status_shows_synchronizing_with_percent_then_protected() {
    require_root();
    let d = tempdir();
    let src = d.path().join("src");
    std::fs::create_dir_all(src.join("etc")).unwrap();
    std::fs::write(src.join("etc/os-release"), "ID=debian\nVERSION_ID=\"12\"\n").unwrap();
    for i in 0..8 {
        // Incompressible, so the limit governs the time on the wire.
        let data: Vec<u8> = (0..(512u32 << 10))
            .map(|j| (j.wrapping_mul(2654435761).wrapping_add(i * 7919) >> 13) as u8)
            .collect();
        std::fs::write(src.join(format!("etc/f{i}")), data).unwrap();
    }
    let (Sides { sid, tf, state, .. }, daemon) = loopback(d.path(), &src, true);
    let mut agent = protect_cmd(&daemon.addr, &sid, &tf, &src)
        .args([
            "--source-id",
            "web1",
            "--once",
            "--json",
            "--compress",
            "0",
            "--bwlimit",
            "1M",
        ])
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(d.path().join("agent.log")).unwrap())
        .spawn()
        .unwrap();
    let mut percents = Vec::new();
    for _ in 0..3000 {
        if agent.try_wait().unwrap().is_some() {
            break;
        }
        if state.join("state.json").exists() {
            let st = status_json(&state);
            if st["state"] == "synchronizing" {
                percents.push(st["mirror_percent"].as_f64().unwrap_or(-1.0));
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = agent.wait_with_output().unwrap();
    let log = std::fs::read_to_string(d.path().join("agent.log")).unwrap_or_default();
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        !percents.is_empty(),
        "status never said synchronizing during the mirror\n{log}"
    );
    assert!(
        percents.iter().all(|p| (0.0..=100.0).contains(p)),
        "mirror percent out of range: {percents:?}"
    );
    let st = status_json(&state);
    assert_eq!(st["state"], "protected", "{st:#}");
    assert_eq!(st["mirror_percent"].as_f64(), Some(100.0), "{st:#}");
    assert_same_tree(&src, &replica(&state, "web1"));
}
