//! The second heartbeat path at the protocol level (loopback, no root): a
//! `heartbeat` role connection carries heartbeats that the target answers
//! and records as the `second` path, with the format-2 fields; heartbeats
//! for another source than the one staged are refused with a reason; a
//! format-1 heartbeat (an older agent) is still read.

mod link_support;

use link_support::common::tempdir;
use link_support::*;
use standin_agent::link::{connect, TargetError};
use standin_link::message::{Heartbeat, Message, ReplicationCounters, Role, HEARTBEAT_FORMAT};

/// The target's state with its heartbeat times (`state.json` and
/// `heartbeats.json`, written within a second of a heartbeat), once `ready`
/// says the heartbeats sent are in it.
fn state_json(
    state: &std::path::Path,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let load =
        || serde_json::to_value(standin_staging::state::TargetState::load(state).unwrap()).unwrap();
    wait_until("the heartbeats in the state directory", || ready(&load()));
    load()
}

#[test]
fn heartbeat_connections_are_recorded_as_the_second_path() {
    let d = tempdir();
    let Loopback {
        daemon, cfg, state, ..
    } = Loopback::start(d.path());
    let rt = runtime();
    rt.block_on(async {
        // The agent binds the source.
        let mut agent = connect(&cfg, Role::Agent).await.unwrap();
        let hb = Heartbeat {
            sent_unix_ms: 1,
            source_seq: 0,
            format: HEARTBEAT_FORMAT,
            interval_ms: Some(300),
            ..Default::default()
        };
        assert!(matches!(
            agent.request(&Message::Heartbeat(hb)).await.unwrap(),
            Message::Ack(_)
        ));

        // The second path: heartbeats only, answered with an Ack.
        let mut second = connect(&cfg, Role::Heartbeat).await.unwrap();
        let hb = Heartbeat {
            sent_unix_ms: 2,
            source_seq: 7,
            queue_sets: 3,
            queue_bytes: 4096,
            format: HEARTBEAT_FORMAT,
            interval_ms: Some(300),
            spilled_sets: 1,
            spilled_bytes: 1024,
            replication: Some(ReplicationCounters {
                queue_full: 2,
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(matches!(
            second.request(&Message::Heartbeat(hb)).await.unwrap(),
            Message::Ack(_)
        ));
        // Nothing but heartbeats (and queries) on it.
        let end = Message::MirrorEnd(standin_link::message::MirrorEnd {
            mirror_id: "m".into(),
            last_seq: 0,
            root_digest: None,
        });
        let refused = second.request(&end).await;
        assert!(refused.is_err(), "{refused:?}");

        // Heartbeats for another source are refused with the reason.
        let mut other = cfg.clone();
        other.source_id = "someone-else".into();
        let e = match connect(&other, Role::Heartbeat).await {
            Ok(_) => panic!("a heartbeat connection for another source was accepted"),
            Err(e) => e,
        };
        let t = e
            .downcast_ref::<TargetError>()
            .expect("a refusal from the target");
        assert!(
            t.reason
                .contains("heartbeats from another source are refused"),
            "{t}"
        );
        assert!(!t.retry);
    });
    let v = state_json(&state, |v| {
        v["heartbeat_paths"]["second"].is_object()
            && v["last_heartbeat"]["heartbeat"]["source_seq"] == 7
    });
    let paths = &v["heartbeat_paths"];
    assert!(
        paths["link"]["received_unix_ms"].as_i64().unwrap() > 0,
        "{v:#}"
    );
    assert!(
        paths["second"]["received_unix_ms"].as_i64().unwrap() > 0,
        "{v:#}"
    );
    let hb = &v["last_heartbeat"]["heartbeat"];
    assert_eq!(hb["source_seq"], 7, "{v:#}");
    assert_eq!(hb["spilled_bytes"], 1024, "{v:#}");
    assert_eq!(hb["replication"]["queue_full"], 2, "{v:#}");
    drop(daemon);
}

#[test]
fn a_format_1_heartbeat_from_an_older_agent_is_read() {
    let d = tempdir();
    let Loopback {
        daemon, cfg, state, ..
    } = Loopback::start(d.path());
    let rt = runtime();
    rt.block_on(async {
        let mut agent = connect(&cfg, Role::Agent).await.unwrap();
        // Exactly what format 1 put on the wire.
        let v1 = br#"{"sent_unix_ms":5,"source_seq":0,"queue_sets":2,"queue_bytes":99,"oldest_pending_unix_ms":null}"#;
        let mut frame = Vec::new();
        standin_link::frame::write_frame(&mut frame, standin_link::message::kind::HEARTBEAT, v1, 0)
            .await
            .unwrap();
        agent.send_raw(&frame).await.unwrap();
        assert!(matches!(agent.recv().await.unwrap(), Message::Ack(_)));
    });
    let v = state_json(&state, |v| {
        v["last_heartbeat"]["heartbeat"]["queue_bytes"] == 99
    });
    let hb = &v["last_heartbeat"]["heartbeat"];
    assert_eq!(hb["queue_bytes"], 99, "{v:#}");
    assert_eq!(hb["format"], 0, "{v:#}");
    drop(daemon);
}
