//! The link between two network namespaces joined by a veth pair
//! (198.18.0.0/24, no default route), with the link cut several times while
//! change sets flow: everything arrives, in order, nothing lost. Needs root.

mod link_support;

use std::os::fd::AsFd;
use std::time::Duration;

use link_support::common::netns::Netns;
use link_support::common::{require_root, require_tool, tempdir};
use link_support::*;
use standin_agent::link::{query_status, Sender};

const SETS: u64 = 30;

#[test]
fn replication_across_namespaces_survives_link_cuts() {
    require_root();
    require_tool("ip", "iproute2");
    let d = tempdir();
    let (tid, tf) = keys(d.path(), "target");
    let (aid, af) = keys(d.path(), "agent");
    let ns = Netns::create("sl");
    let state = d.path().join("state");
    let _daemon = Daemon::start_in(
        Some(&ns.tgt),
        &state,
        &tid,
        &[af],
        "198.18.0.2:6320",
        &d.path().join("daemon.log"),
    );
    let (sets, states) = history(SETS);

    // The agent runs on a thread that moved into the source namespace; a
    // current-thread runtime keeps all its sockets there.
    let src_ns = format!("/run/netns/{}", ns.src);
    let cfg = agent_config("198.18.0.2", &aid, tf);
    let (tx, rx) = std::sync::mpsc::channel::<u64>();
    let agent = std::thread::spawn(move || {
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
            let sender = Sender::start(cfg.clone())
                .await
                .expect("connecting across namespaces");
            for (i, r) in sets.into_iter().enumerate() {
                sender.send(r).unwrap();
                let _ = tx.send(i as u64 + 1);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::timeout(Duration::from_secs(300), sender.wait_acked(SETS))
                .await
                .expect("gave up waiting for the last acknowledgement")
                .unwrap();
            let stats = sender.stats();
            let status = query_status(&cfg).await.expect("status across namespaces");
            (stats, status)
        })
    });

    // Cut the link five times while change sets flow.
    for _ in 0..5 {
        let _ = rx.recv();
        ns.set_link(false);
        std::thread::sleep(Duration::from_millis(1500));
        ns.set_link(true);
        std::thread::sleep(Duration::from_millis(300));
    }
    let (stats, status) = agent.join().expect("agent thread");
    assert_eq!(stats.last_acked, SETS, "{stats:?}");
    assert_eq!(status.last_applied_seq, SETS, "{status:?}");
    assert_eq!(read_tree(&replica(&state)), states[SETS as usize]);
    eprintln!("agent after 5 link cuts: {stats:?}");
}
