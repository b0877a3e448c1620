//! Pinned mutual TLS: the right pins connect; a wrong client or server
//! certificate is refused before any data moves, and both sides name the
//! fingerprint that was offered.

mod link_support;

use link_support::common::{run_code, run_ok, standin, stderr, stdout, tempdir};
use link_support::*;

#[test]
fn pins_are_enforced_on_both_sides() {
    let d = tempdir();
    let (tid, tf) = keys(d.path(), "target");
    let (aid, af) = keys(d.path(), "agent");
    let (xid, xf) = keys(d.path(), "stranger");
    let state = d.path().join("state");
    let log = d.path().join("daemon.log");
    // Fingerprints are accepted with colons and without the prefix.
    let colons: Vec<String> = af.0.iter().map(|b| format!("{b:02x}")).collect();
    let daemon = Daemon::start(
        &state,
        &tid,
        &[colons.join(":").parse().unwrap()],
        "127.0.0.1:0",
        &log,
    );
    let before = listing(&state);

    // Right pins: status over the network works.
    let out = run_ok(
        standin()
            .args(["status", "--json", "--target", &daemon.addr, "--identity"])
            .arg(&aid)
            .args(["--trust", &hex::encode(tf.0)]),
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["state"], "unprotected");

    // A client certificate the target does not trust.
    let out = run_code(
        standin()
            .args(["status", "--target", &daemon.addr, "--identity"])
            .arg(&xid)
            .args(["--trust", &tf.to_string()]),
        1,
        None,
    );
    assert!(
        stderr(&out).contains(&format!("certificate {xf}")),
        "{}",
        stderr(&out)
    );
    // A server certificate the client does not trust (it pins the stranger).
    let out = run_code(
        standin()
            .args(["status", "--target", &daemon.addr, "--identity"])
            .arg(&aid)
            .args(["--trust", &xf.to_string()]),
        1,
        None,
    );
    assert!(
        stderr(&out).contains(&format!("target offered certificate {tf}")),
        "{}",
        stderr(&out)
    );

    // The agent path refuses the same way, and nothing reached the state directory.
    let rt = runtime();
    let err = rt
        .block_on(standin_agent::link::Sender::start(agent_config(
            &daemon.addr,
            &xid,
            tf,
        )))
        .err()
        .expect("a stranger must be refused");
    assert!(format!("{err:#}").contains(&xf.to_string()), "{err:#}");
    let err = rt
        .block_on(standin_agent::link::Sender::start(agent_config(
            &daemon.addr,
            &aid,
            xf,
        )))
        .err()
        .expect("a wrong target pin must be refused");
    assert!(format!("{err:#}").contains(&tf.to_string()), "{err:#}");
    assert_eq!(
        listing(&state),
        before,
        "a refused peer changed the state directory"
    );
    let state_json = std::fs::read_to_string(state.join("state.json")).unwrap();
    assert!(state_json.contains("\"source_id\": null"), "{state_json}");

    // The target logged the fingerprint each client offered.
    let logtext = daemon.log_text();
    assert!(
        logtext.contains(&xf.to_string()),
        "daemon log lacks the refused fingerprint:\n{logtext}"
    );
    assert!(
        logtext.contains(&af.to_string()),
        "daemon log lacks the accepted fingerprint:\n{logtext}"
    );
}
