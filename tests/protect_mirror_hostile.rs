//! Hostile difference-mirror batches (protocol 2's binary MirrorEntries):
//! oversized counts, bad varints, escaping paths and front-coding tricks
//! are refused with a clear reason in the daemon's log, nothing outside the
//! staging root is read or written, and the daemon keeps serving.

mod link_support;

use link_support::common::tempdir;
use link_support::*;
use standin_agent::link::connect;
use standin_builder::entry::Kind;
use standin_link::message::{kind, Message, MirrorEntries, Role};
use standin_link::mirror_wire::encode_entries;

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = ((payload.len() + 2) as u32).to_be_bytes().to_vec();
    f.extend_from_slice(&[kind, 0]);
    f.extend_from_slice(payload);
    f
}

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// "SIME", version 3, batch 1, block size 4096, then `count`.
fn header(count: u64) -> Vec<u8> {
    let mut b = b"SIME\x03".to_vec();
    varint(&mut b, 1);
    varint(&mut b, 4096);
    varint(&mut b, count);
    b
}

#[test]
fn hostile_mirror_batches_are_refused_and_the_daemon_keeps_serving() {
    let d = tempdir();
    let Hostile {
        mut daemon,
        cfg,
        outside,
        ..
    } = Hostile::start(d.path());
    let rt = runtime();
    let before = listing(&outside);

    let escaping = |p: &[u8]| {
        let mut e = entry("x", Kind::File);
        e.path = p.to_vec();
        e.sha256 = Some("ab".repeat(32));
        encode_entries(&MirrorEntries {
            batch: 1,
            entries: vec![e],
            block_size: 4096,
            gone: Vec::new(),
        })
        .unwrap()
    };
    let mut bad_varint = header(1);
    bad_varint.extend_from_slice(&[0xff; 11]);
    let mut overlong = b"SIME\x03".to_vec();
    overlong.extend_from_slice(&[0x81, 0x80, 0x00]);
    let mut prefix = header(1);
    varint(&mut prefix, 9); // shares 9 bytes with the empty previous path
    varint(&mut prefix, 1);
    prefix.extend_from_slice(b"x\x01\x00\x00\x00\x00\x00\x00");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "oversized count",
            header(u64::MAX >> 1),
            "more than the limit",
        ),
        ("count beyond the input", header(100_000), "bytes left"),
        ("bad varint", bad_varint, "varint"),
        ("overlong varint", overlong, "overlong varint"),
        (
            "path escaping",
            escaping(b"../../outside/victim"),
            "contains \"..\"",
        ),
        ("absolute path", escaping(b"/etc/shadow"), "absolute path"),
        (
            "front coding past the previous path",
            prefix,
            "path prefix 9",
        ),
        (
            "random bytes",
            b"SIME\x03\x07\x00\xff\x13\x99".to_vec(),
            "malformed mirror entries",
        ),
    ];
    for (what, payload, reason) in cases {
        let mut c = rt.block_on(connect(&cfg, Role::Agent)).unwrap();
        rt.block_on(c.send_raw(&frame(kind::MIRROR_ENTRIES, &payload)))
            .unwrap();
        let r = rt.block_on(c.recv());
        let err = format!("{:#}", r.expect_err(what));
        assert!(err.contains("malformed mirror entries"), "{what}: {err}");
        assert!(daemon.alive(), "{what}: the daemon died");
        assert!(err.contains(reason), "{what}: {err}");
        // The daemon logs the reason as it closes the connection.
        wait_until(&format!("{what}: the daemon log naming {reason:?}"), || {
            daemon.log_text().contains(reason)
        });
    }

    // Still serving: a good batch is compared (a missing file), and the
    // empty batch that ends the list answers.
    let mut c = rt.block_on(connect(&cfg, Role::Agent)).unwrap();
    let mut good = entry("etc/hostname", Kind::File);
    good.size = 3;
    good.sha256 = Some("cd".repeat(32));
    let m = Message::MirrorEntries(MirrorEntries {
        batch: 1,
        entries: vec![good],
        block_size: 4096,
        gone: Vec::new(),
    });
    match rt.block_on(c.request(&m)).unwrap() {
        Message::MirrorDiff(d) => {
            assert_eq!(d.batch, 1);
            assert_eq!(d.items.len(), 1);
            assert_eq!(d.items[0].state, "missing");
        }
        other => panic!("expected a mirror diff, got {other:?}"),
    }
    assert_eq!(listing(&outside), before);
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"precious");
}
