//! A full disk on the target pauses apply with a Warning and loses nothing:
//! once space is back, the same change sets apply and the replica converges.
//! Needs root (mounts a small tmpfs for the state directory).

mod link_support;

use std::path::{Path, PathBuf};
use std::process::Command;

use link_support::common::{require_root, require_tool, run_ok, tempdir};
use link_support::*;
use standin_agent::link::Sender;

struct Mount(PathBuf);

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn mount_tmpfs(dir: &Path, size: &str) -> Mount {
    std::fs::create_dir_all(dir).unwrap();
    run_ok(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir),
        None,
    );
    Mount(dir.to_path_buf())
}

#[test]
fn full_disk_pauses_and_resumes_without_loss() {
    require_root();
    require_tool("mount", "mount");
    let d = tempdir();
    let (tid, tf) = keys(d.path(), "target");
    let (aid, af) = keys(d.path(), "agent");
    let small = d.path().join("small");
    let _m = mount_tmpfs(&small, "1m");
    let state = small.join("state");
    let _daemon = Daemon::start(
        &state,
        &tid,
        &[af],
        "127.0.0.1:0",
        &d.path().join("daemon.log"),
    );
    let (sets, states) = history(12);
    let rt = runtime();
    let sender = rt
        .block_on(Sender::start(agent_config(&_daemon.addr, &aid, tf)))
        .unwrap();
    for r in &sets {
        sender.send(r.clone()).unwrap();
    }
    // The tree needs more than 1 MiB: apply pauses with a Warning about space.
    let mut warned = None;
    wait_until("a disk-full warning", || {
        match rt.block_on(standin_agent::link::query_status(&agent_config(
            &_daemon.addr,
            &aid,
            tf,
        ))) {
            Ok(s) if s.state == standin_link::status::State::Warning => {
                warned = s.reason.clone();
                true
            }
            _ => false,
        }
    });
    let reason = warned.unwrap();
    assert!(reason.contains("disk full"), "{reason}");
    let stuck = applied(&state);
    assert!(stuck < 12, "everything applied on a 1 MiB disk?");
    // Nothing is lost: the change set being applied stays journaled here (or,
    // if it could not even be journaled, queued at the agent), and the agent
    // still holds everything not acknowledged.
    let journaled = listing(&state.join("journal"))
        .iter()
        .any(|(n, _)| n.ends_with(".cs"));
    // The target paused before touching the replica: it is exactly the tree
    // as of the last applied change set.
    assert_eq!(
        read_tree(&replica(&state)),
        states[stuck as usize],
        "a paused replica must be a consistent prefix"
    );
    // The acknowledgement of the last applied set may still be on its way.
    wait_until("the last acknowledgement", || {
        sender.stats().last_acked == stuck
    });
    let stats = sender.stats();
    assert!(journaled || stats.queue_sets > 0, "{stats:?}");
    assert_eq!(stats.queue_sets, 12 - stuck, "{stats:?}");

    // Space comes back: everything applies, nothing was lost.
    run_ok(
        Command::new("mount")
            .args(["-o", "remount,size=64m"])
            .arg(&small),
        None,
    );
    rt.block_on(sender.wait_acked(12)).unwrap();
    assert_eq!(read_tree(&replica(&state)), states[12]);
    let s = rt
        .block_on(standin_agent::link::query_status(&agent_config(
            &_daemon.addr,
            &aid,
            tf,
        )))
        .unwrap();
    assert!(
        !s.reason.as_deref().unwrap_or("").contains("paused"),
        "{s:?}"
    );
    rt.block_on(sender.close());
}
