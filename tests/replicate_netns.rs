//! Replication between two network namespaces joined by a veth pair
//! (198.18.0.0/24, no default route): the link is cut with
//! `ip link set down` for 2.5 s, 20 times, while the workload runs;
//! the replica converges with nothing lost. Needs root.

mod replicate_support;

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use replicate_support::common::netns::Netns;
use replicate_support::common::{require_root, require_tool};
use replicate_support::*;
use standin_agent::blockindex::BlockIndex;
use standin_agent::capture::{CaptureOptions, Watcher};
use standin_agent::link::Sender;
use standin_agent::replicate::{replicate, ReplicateOptions};

fn step(s: &std::path::Path, i: u32) {
    let d = s.join(format!("d{}", i % 4));
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join(format!("f{i}")),
        format!("{i}").repeat(1000 + i as usize),
    )
    .unwrap();
    std::io::Write::write_all(
        &mut std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(s.join("log"))
            .unwrap(),
        format!("entry {i}\n").as_bytes(),
    )
    .unwrap();
    if i >= 3 {
        let old = s.join(format!("d{}/f{}", (i - 3) % 4, i - 3));
        let new = s.join(format!("d{}/m{}", (i + 1) % 4, i - 3));
        std::fs::create_dir_all(new.parent().unwrap()).unwrap();
        std::fs::rename(old, new).unwrap();
    }
    if i >= 6 && i % 2 == 0 {
        let _ = std::fs::remove_file(s.join(format!("d{}/m{}", (i - 5) % 4, i - 6)));
    }
}

#[test]
fn replication_survives_20_link_cuts_between_namespaces() {
    require_root();
    require_tool("ip", "iproute2");
    let d = common::tempdir();
    let (tid, tf) = keys(d.path(), "target");
    let (aid, af) = keys(d.path(), "agent");
    let ns = Netns::create("sr");
    let state = d.path().join("state");
    let _daemon = Daemon::start_in(
        Some(&ns.tgt),
        &state,
        &tid,
        &[af],
        "198.18.0.2:6320",
        &d.path().join("daemon.log"),
    );
    let src = d.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let agent_state = d.path().join("agent-state");
    std::fs::create_dir(&agent_state).unwrap();
    let opts = ReplicateOptions::default();
    let counters = opts.counters.clone();
    let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (stx, srx) = std::sync::mpsc::channel::<Arc<Sender>>();
    // The agent runs on a thread inside the source namespace; a
    // current-thread runtime keeps its sockets there.
    let agent = {
        let (src, agent_state) = (src.clone(), agent_state.clone());
        let src_ns = format!("/run/netns/{}", ns.src);
        let cfg = agent_config("198.18.0.2", &aid, tf);
        std::thread::spawn(move || {
            let f = std::fs::File::open(&src_ns).expect("opening the source namespace");
            rustix::thread::move_into_link_name_space(
                f.as_fd(),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("entering the source namespace");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let watcher = Watcher::start(
                    &src,
                    &CaptureOptions {
                        ignore: vec![agent_state.clone()],
                        ..Default::default()
                    },
                )
                .unwrap();
                let index = BlockIndex::open(&agent_state).unwrap();
                let sender = Arc::new(
                    Sender::start(cfg)
                        .await
                        .expect("connecting across namespaces"),
                );
                stx.send(sender.clone()).unwrap();
                replicate(&src, opts, watcher, index, &sender, async move {
                    let _ = stop_rx.await;
                })
                .await
            })
        })
    };
    let sender = srx.recv().expect("the agent started");
    for i in 0..20u32 {
        step(&src, 2 * i);
        std::thread::sleep(Duration::from_millis(100));
        ns.set_link(false);
        step(&src, 2 * i + 1);
        // Longer than the agent's dead_after (2 s in tests): the agent
        // notices the silence and reconnects.
        std::thread::sleep(Duration::from_millis(2500));
        ns.set_link(true);
        std::thread::sleep(Duration::from_millis(200));
    }
    let replica = replica(&state);
    let mut last = Vec::new();
    for _ in 0..600 {
        std::thread::sleep(Duration::from_millis(200));
        if sender.stats().queue_sets > 0 {
            continue;
        }
        last = differences(&src, &replica);
        if last.is_empty() {
            break;
        }
    }
    assert!(
        last.is_empty(),
        "did not converge:\n{}\n{:?}\n{:?}",
        last.join("\n"),
        sender.stats(),
        counters.report()
    );
    let st = sender.stats();
    let _ = stop.send(());
    let r = agent
        .join()
        .expect("agent thread")
        .expect("replication failed");
    assert!(st.reconnects >= 1, "the link never dropped: {st:?}");
    assert_eq!(r.queue_full, 0, "{r:?}");
    assert!(r.sets_sent >= 20, "{r:?}");
}
