//! The target appliance disk boots, and `standin target serve` inside it
//! answers TLS on a port that qemu user networking forwards to 127.0.0.1,
//! presenting the identity the appliance created at its first boot.

mod common;
mod disk_support;

use std::process::Command;
use std::time::Duration;

use common::*;
use disk_support::*;
use standin_builder::boot::{BootOptions, Vm};

/// A syntactically valid fingerprint for `--trust` (no source connects in this test).
const TRUST: &str = "sha256:abababababababababababababababababababababababababababababababab";

#[test]
fn appliance_boots_and_serve_answers_tls_on_forwarded_port() {
    require_disk_tools();
    require_tool("qemu-system-x86_64", "qemu-system-x86");
    let dir = tempdir();
    let disk = dir.path().join("appliance.img");
    run_ok(
        standin()
            .args(["image", "disk", "--recipe"])
            .arg(images_dir().join("target-appliance.toml"))
            .arg("-o")
            .arg(&disk)
            .arg("--init-env")
            .arg(format!("TRUST={TRUST}")),
        Some(dir.path()),
    );
    let scratch = tempdir();
    let ext4 = check_disk(&disk, scratch.path());
    let st = debugfs(&ext4, "stat /usr/bin/standin");
    assert!(st.contains("Mode:  0755"), "{st}");
    let conf = scratch.path().join("init.conf");
    debugfs(
        &ext4,
        &format!("dump /etc/standin/init.conf {}", conf.display()),
    );
    assert!(std::fs::read_to_string(&conf)
        .unwrap()
        .contains(&format!("TRUST='{TRUST}'")));

    // A free port on 127.0.0.1 for the forward.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut opts = BootOptions::new(&disk);
    opts.forwards = vec![(port, 6320)];
    opts.log = Some(dir.path().join("appliance.serial.log"));
    let mut vm = Vm::start(&opts).expect("starting qemu");
    vm.wait_for("STANDIN-APPLIANCE-", Duration::from_secs(900))
        .expect("the appliance init reports");
    // Give the console a moment to finish the line.
    std::thread::sleep(Duration::from_millis(500));
    let console = vm.log_text();
    assert!(
        console.contains("STANDIN-APPLIANCE-READY host=standin-target listen=0.0.0.0:6320"),
        "the appliance did not get `standin target serve` listening; last console lines:\n{}",
        vm.log_tail(30)
    );

    // serve speaks TLS on the forwarded port, with the identity the
    // appliance made at first boot: the certificate openssl sees through
    // 127.0.0.1:PORT has the fingerprint the init printed.
    let printed = console
        .lines()
        .find_map(|l| l.split("standin appliance: identity ").nth(1))
        .map(|f| f.trim().to_string())
        .unwrap_or_else(|| panic!("no identity line on the console:\n{}", vm.log_tail(30)));
    assert!(printed.starts_with("sha256:"), "{printed}");
    let openssl = require_tool("openssl", "openssl");
    let out = Command::new(&openssl)
        .args([
            "s_client",
            "-connect",
            &format!("127.0.0.1:{port}"),
            "-showcerts",
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let pem = text
        .find("-----BEGIN CERTIFICATE-----")
        .and_then(|a| {
            text[a..]
                .find("-----END CERTIFICATE-----")
                .map(|b| &text[a..a + b + 25])
        })
        .unwrap_or_else(|| {
            panic!(
                "no server certificate through 127.0.0.1:{port}:\n{text}\n{}",
                vm.log_tail(30)
            )
        });
    let pem_file = dir.path().join("server.pem");
    std::fs::write(&pem_file, pem).unwrap();
    let der = run_ok(
        Command::new(&openssl)
            .args(["x509", "-outform", "DER", "-in"])
            .arg(&pem_file),
        None,
    );
    assert_eq!(
        format!("sha256:{}", sha256_hex(&der.stdout)),
        printed,
        "server certificate vs printed identity"
    );
    vm.stop();
    assert_no_qemu_left(&disk);
}
