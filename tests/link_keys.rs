//! `standin keys init/show`.

mod link_support;

use link_support::common::{run_code, run_ok, standin, stdout, tempdir};

#[test]
fn keys_init_show_and_refuse_overwrite() {
    let d = tempdir();
    let dir = d.path().join("id");
    let out = run_ok(
        standin().args(["keys", "init", "--dir"]).arg(&dir),
        Some(d.path()),
    );
    let fpr = stdout(&out).trim().to_string();
    assert!(fpr.starts_with("sha256:") && fpr.len() == 7 + 64, "{fpr}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    assert!(std::fs::read_to_string(dir.join("cert.pem"))
        .unwrap()
        .contains("BEGIN CERTIFICATE"));

    let out = run_ok(
        standin()
            .args(["keys", "show", "--json", "--dir"])
            .arg(&dir),
        None,
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["fingerprint"], fpr);

    // The fingerprint is the sha256 of the DER certificate.
    let pem = std::fs::read_to_string(dir.join("cert.pem")).unwrap();
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = decode_base64(&b64);
    use sha2::Digest;
    assert_eq!(
        fpr,
        format!("sha256:{}", hex::encode(sha2::Sha256::digest(&der)))
    );

    let out = run_code(standin().args(["keys", "init", "--dir"]).arg(&dir), 1, None);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--force"));
    assert_eq!(
        stdout(&run_ok(
            standin().args(["keys", "show", "--dir"]).arg(&dir),
            None
        ))
        .trim(),
        fpr
    );

    let out = run_ok(
        standin()
            .args(["keys", "init", "--force", "--dir"])
            .arg(&dir),
        None,
    );
    assert_ne!(stdout(&out).trim(), fpr);

    let out = run_code(
        standin()
            .args(["keys", "show", "--dir"])
            .arg(d.path().join("none")),
        1,
        None,
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("standin keys init"));
}

fn decode_base64(s: &str) -> Vec<u8> {
    let table = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = table
            .iter()
            .position(|&t| t == c)
            .expect("base64 character") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}
