//! Hostile input: every attempt is refused, nothing outside the staging root
//! is touched, and the daemon keeps serving.

mod link_support;

use std::io::Write;

use link_support::common::tempdir;
use link_support::*;
use standin_agent::link::{connect, Connection, LinkConfig};
use standin_builder::changeset::{ChangeSet, Record};
use standin_builder::entry::Kind;
use standin_link::message::{Message, Role};

fn set(seq: u64, records: Vec<Record>) -> Message {
    Message::ChangeSet(Box::new(ChangeSet {
        seq,
        created_unix_ms: 0,
        records,
    }))
}

fn file_with(path: &str, data: &[u8]) -> Vec<Record> {
    vec![
        Record::Create(entry(path, Kind::File)),
        Record::WriteExtent {
            path: path.as_bytes().to_vec(),
            offset: 0,
            data: data.to_vec(),
            content_digest: Some(standin_builder::hash::content_digest(data)),
        },
    ]
}

/// Send a set and return the answer (Ack) or the target's error text.
fn exchange(
    rt: &tokio::runtime::Runtime,
    c: &mut Connection,
    m: &Message,
) -> Result<Message, String> {
    rt.block_on(c.request(m)).map_err(|e| format!("{e:#}"))
}

/// The daemon still serves: a fresh connection applies the next good change set.
fn still_serving(
    rt: &tokio::runtime::Runtime,
    cfg: &LinkConfig,
    daemon: &mut Daemon,
    seq: &mut u64,
) {
    assert!(daemon.alive(), "the daemon died:\n{}", daemon.log_text());
    let mut c = rt
        .block_on(connect(cfg, Role::Agent))
        .expect("connecting after hostile input");
    assert_eq!(c.welcome.last_applied_seq, *seq);
    *seq += 1;
    let name = format!("good{seq}");
    match exchange(rt, &mut c, &set(*seq, file_with(&name, b"fine"))) {
        Ok(Message::Ack(a)) => assert_eq!(a.seq, *seq),
        other => panic!("good change set {seq} not acknowledged: {other:?}"),
    }
}

#[test]
fn hostile_input_is_refused_and_the_daemon_keeps_serving() {
    let d = tempdir();
    let Hostile {
        mut daemon,
        cfg,
        tf,
        state,
        outside,
    } = Hostile::start(d.path());
    let (xid, _) = keys(d.path(), "stranger");
    let rt = runtime();
    let mut seq = 0;
    still_serving(&rt, &cfg, &mut daemon, &mut seq);
    let before_outside = listing(&outside);
    let top_before: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();

    // Path traversal and absolute paths: the whole set is refused before journaling.
    let victim = outside.join("victim").to_string_lossy().into_owned();
    let bad_sets: Vec<Vec<Record>> = vec![
        file_with("../../../../outside/victim", b"pwned"),
        vec![Record::Delete {
            path: b"a/../../../../outside/victim".to_vec(),
        }],
        file_with(&victim, b"pwned"),
        vec![Record::Delete {
            path: victim.clone().into_bytes(),
        }],
        vec![Record::Rename {
            from: b"good1".to_vec(),
            to: b"../../../outside/moved".to_vec(),
        }],
        vec![Record::Link {
            existing: victim.clone().into_bytes(),
            new: b"stolen".to_vec(),
        }],
    ];
    for records in bad_sets {
        let mut c = rt.block_on(connect(&cfg, Role::Agent)).unwrap();
        let r = exchange(&rt, &mut c, &set(seq + 1, records.clone()));
        let err = r.expect_err("a hostile change set was acknowledged");
        assert!(
            err.contains("refused") || err.contains("contains") || err.contains("absolute"),
            "{err}"
        );
        still_serving(&rt, &cfg, &mut daemon, &mut seq);
    }

    // A change set of format 3 (sha256 content digests and checksum, as
    // an agent before protocol 5 wrote it), well formed: refused by name,
    // nothing written, and the daemon keeps serving.
    let ChangeSet { records, .. } = match set(seq + 1, file_with("old-format", b"data")) {
        Message::ChangeSet(cs) => *cs,
        _ => unreachable!(),
    };
    let mut raw = ChangeSet {
        seq: seq + 1,
        created_unix_ms: 0,
        records,
    }
    .encode()
    .unwrap();
    raw[4] = 3;
    let body = raw.len() - 32;
    let sum = {
        use sha2::Digest;
        sha2::Sha256::digest(&raw[..body])
    };
    raw[body..].copy_from_slice(&sum);
    let mut frame = ((raw.len() + 2) as u32).to_be_bytes().to_vec();
    frame.extend_from_slice(&[standin_link::message::kind::CHANGE_SET, 0]);
    frame.extend_from_slice(&raw);
    let mut c = rt.block_on(connect(&cfg, Role::Agent)).unwrap();
    rt.block_on(c.send_raw(&frame)).unwrap();
    let err = format!(
        "{:#}",
        rt.block_on(c.recv())
            .expect_err("a format-3 set was accepted")
    );
    assert!(
        err.contains("version 3 holds sha256") && err.contains("same standin version"),
        "{err}"
    );
    assert!(!state.join("staging/src1/old-format").exists());
    still_serving(&rt, &cfg, &mut daemon, &mut seq);

    // A symlinked parent pointing out (absolute and relative): the records
    // are refused at apply time, logged, and the state turns to Warning.
    let mut link = entry("esc", Kind::Symlink);
    link.target = Some(outside.to_string_lossy().into_owned().into_bytes());
    let mut up = entry("up", Kind::Symlink);
    up.target = Some(b"../../../../outside".to_vec());
    let mut records = vec![Record::Create(link), Record::Create(up)];
    records.extend(file_with("esc/pwned", b"x"));
    records.extend(file_with("up/pwned", b"x"));
    records.push(Record::Delete {
        path: b"esc/victim".to_vec(),
    });
    records.push(Record::Delete {
        path: b"up/victim".to_vec(),
    });
    records.push(Record::Rename {
        from: b"up/victim".to_vec(),
        to: b"taken".to_vec(),
    });
    let mut c = rt.block_on(connect(&cfg, Role::Agent)).unwrap();
    seq += 1;
    match exchange(&rt, &mut c, &set(seq, records)) {
        Ok(Message::Ack(a)) => assert_eq!(a.seq, seq),
        other => panic!("{other:?}"),
    }
    let status = rt
        .block_on(standin_agent::link::query_status(&cfg))
        .unwrap();
    assert_eq!(
        status.state,
        standin_link::status::State::Warning,
        "{status:?}"
    );
    assert!(
        status.reason.as_deref().unwrap().contains("symlink"),
        "{status:?}"
    );
    still_serving(&rt, &cfg, &mut daemon, &mut seq);

    // Oversized frame lengths, random bytes after the handshake, an unknown
    // frame type, a truncated change set, and garbage before the handshake.
    let mut noise: Vec<u8> = Vec::new();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for _ in 0..4096 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        noise.push(x as u8);
    }
    let mut truncated = ChangeSet {
        seq: seq + 1,
        created_unix_ms: 0,
        records: file_with("t", b"t"),
    }
    .encode()
    .unwrap();
    truncated.truncate(truncated.len() - 10);
    let mut truncated_frame = ((truncated.len() + 2) as u32).to_be_bytes().to_vec();
    truncated_frame.extend_from_slice(&[0x40, 0]);
    truncated_frame.extend_from_slice(&truncated);
    let raw_inputs: Vec<(&str, Vec<u8>)> = vec![
        (
            "oversized length",
            [0xff, 0xff, 0xff, 0xff, 0x40, 0].to_vec(),
        ),
        (
            "just over the limit",
            [(16u32 << 20) + 1]
                .iter()
                .flat_map(|l| l.to_be_bytes())
                .chain([0x40, 0])
                .collect(),
        ),
        ("random bytes", noise.clone()),
        ("unknown frame type", vec![0, 0, 0, 2, 0x99, 0]),
        ("unknown flags", vec![0, 0, 0, 2, 0x50, 0x80]),
        ("truncated change set", truncated_frame),
    ];
    for (what, bytes) in raw_inputs {
        let mut c = rt.block_on(connect(&cfg, Role::Agent)).unwrap();
        rt.block_on(c.send_raw(&bytes)).unwrap();
        let r = rt.block_on(c.recv());
        assert!(r.is_err(), "{what}: the daemon answered {r:?}");
        still_serving(&rt, &cfg, &mut daemon, &mut seq);
    }
    {
        let mut s = std::net::TcpStream::connect(&daemon.addr).unwrap();
        let _ = s.write_all(&noise);
        drop(s);
        still_serving(&rt, &cfg, &mut daemon, &mut seq);
    }

    // A wrong certificate.
    let stranger = agent_config(&daemon.addr, &xid, tf);
    assert!(rt.block_on(connect(&stranger, Role::Agent)).is_err());
    still_serving(&rt, &cfg, &mut daemon, &mut seq);

    // Nothing outside the staging root changed.
    assert_eq!(listing(&outside), before_outside);
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"precious");
    let top_after: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(top_after, top_before);
    let staged: Vec<_> = std::fs::read_dir(state.join("staging/src1"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(staged, vec![std::ffi::OsString::from("root")]);
    let log = daemon.log_text();
    for reason in [
        "exceeds the limit",
        "unknown frame type",
        "symlink or leads out",
        "TLS handshake refused",
    ] {
        assert!(log.contains(reason), "daemon log lacks {reason:?}:\n{log}");
    }
}
