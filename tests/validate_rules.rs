//! Every validation rule, on real profiles (this machine and a debootstrap
//! root) edited per rule: it fires with the right severity and stays quiet
//! when it should.

mod common;

use std::sync::OnceLock;

use serde_json::{json, Value};
use standin_validate::rules::bytes;
use standin_validate::{validate, Options, Profile, Report, Severity};

fn collect(args: &[&str]) -> Value {
    let out = common::run_ok(
        common::standin().arg("profile").arg("--json").args(args),
        None,
    );
    serde_json::from_slice(&out.stdout).expect("profile --json prints JSON")
}

/// (source, target): the debootstrap root as the source, this machine as
/// the target, edited only so that every rule is quiet.
fn base() -> (Value, Value) {
    static BASE: OnceLock<(Value, Value)> = OnceLock::new();
    BASE.get_or_init(|| {
        let root = common::debian_root();
        let mut s = collect(&["--root", root.to_str().unwrap()]);
        let mut t = collect(&[]);
        assert_eq!(s["os"]["id"], "debian", "debootstrap root profile: {s}");
        assert_eq!(s["os"]["version_id"], "12");
        assert_eq!(s["volumes"][0]["mount_point"], "/");
        // The tree lies on this machine's disk: give its / a small free
        // space so that step 1 of the capacity check passes.
        s["volumes"][0]["free_bytes"] = json!(1u64 << 30);
        s["nics"] =
            json!([{"name": "eth0", "mac": "52:54:00:00:00:01", "addresses": ["198.18.0.1/24"]}]);
        t["os"] = s["os"].clone();
        t["boot_mode"] = s["boot_mode"].clone();
        t["boot_loader"] = json!("grub");
        t["hostname"] = json!("standby");
        t["services"] = json!([]);
        t["cpus"] = s["cpus"].clone();
        t["memory_bytes"] = s["memory_bytes"].clone();
        t["nics"] =
            json!([{"name": "eth0", "mac": "52:54:00:00:00:02", "addresses": ["198.18.0.2/24"]}]);
        (s, t)
    })
    .clone()
}

fn run(s: &Value, t: &Value) -> Report {
    let s = Profile::from_json(s.to_string().as_bytes(), "source").expect("source profile");
    let t = Profile::from_json(t.to_string().as_bytes(), "target").expect("target profile");
    validate(&s, &t, &Options::default())
}

/// Exactly `id` is not ok, with `sev`; returns its message.
fn fires(r: &Report, id: &str, sev: Severity) -> String {
    let f = r
        .get(id)
        .unwrap_or_else(|| panic!("no finding {id}: {r:#?}"));
    assert_eq!(f.severity, sev, "{id}: {f:#?}");
    let others: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.id != id && f.severity != Severity::Ok)
        .collect();
    assert!(
        others.is_empty(),
        "only {id} should fire, also: {others:#?}"
    );
    f.message.clone()
}

fn quiet(r: &Report) {
    let loud: Vec<_> = r
        .findings
        .iter()
        .filter(|f| f.severity != Severity::Ok)
        .collect();
    assert!(loud.is_empty(), "expected no errors or warnings: {loud:#?}");
}

fn edit(f: impl FnOnce(&mut Value, &mut Value)) -> Report {
    let (mut s, mut t) = base();
    f(&mut s, &mut t);
    run(&s, &t)
}

#[test]
fn base_pair_is_quiet_and_lists_every_rule() {
    let r = edit(|_, _| {});
    quiet(&r);
    for id in [
        "os.match",
        "arch.match",
        "cpu.count",
        "memory.size",
        "boot.mode",
        "boot.loader",
        "volume./.fs",
        "capacity.staging",
        "staging.same-fs",
        "nic.map",
        "nic.count",
        "services.target-running",
        "hostname",
        "version.compat",
    ] {
        assert!(r.get(id).is_some(), "no {id} finding: {r:#?}");
    }
    assert!(r
        .get("hostname")
        .unwrap()
        .details
        .contains("takes the source's name"));
}

#[test]
fn os_id_and_major_version() {
    let m = fires(
        &edit(|_, t| t["os"]["id"] = json!("ubuntu")),
        "os.match",
        Severity::Error,
    );
    assert!(m.contains("source debian 12, target ubuntu 12"), "{m}");
    let m = fires(
        &edit(|_, t| t["os"]["version_id"] = json!("11")),
        "os.match",
        Severity::Error,
    );
    assert!(m.contains("target debian 11"), "{m}");
    quiet(&edit(|_, t| t["os"]["version_id"] = json!("12.4")));
}

#[test]
fn architecture() {
    let m = fires(
        &edit(|_, t| t["arch"] = json!("aarch64")),
        "arch.match",
        Severity::Error,
    );
    assert!(
        m.contains("source x86_64, target aarch64") || m.contains("target aarch64"),
        "{m}"
    );
}

#[test]
fn cpu_count() {
    let m = fires(
        &edit(|s, t| s["cpus"] = json!(t["cpus"].as_u64().unwrap() + 2)),
        "cpu.count",
        Severity::Warning,
    );
    assert!(m.contains("CPUs"), "{m}");
    quiet(&edit(|s, _| s["cpus"] = json!(1)));
}

#[test]
fn memory_within_25_percent() {
    let set = |s: &mut Value, t: &mut Value, src: u64, tgt: u64| {
        s["memory_bytes"] = json!(src);
        t["memory_bytes"] = json!(tgt);
    };
    let m = fires(
        &edit(|s, t| set(s, t, 8 << 30, 4 << 30)),
        "memory.size",
        Severity::Warning,
    );
    assert!(m.contains("-50.0%"), "{m}");
    assert!(
        m.contains("8589934592 bytes") && m.contains("4294967296 bytes"),
        "{m}"
    );
    let m = fires(
        &edit(|s, t| set(s, t, 1000 << 20, 1300 << 20)),
        "memory.size",
        Severity::Warning,
    );
    assert!(m.contains("+30.0%"), "{m}");
    quiet(&edit(|s, t| set(s, t, 1000 << 20, 1200 << 20)));
    quiet(&edit(|s, t| set(s, t, 1000 << 20, 750 << 20)));
}

#[test]
fn boot_mode_and_loader() {
    let m = fires(
        &edit(|s, t| {
            s["boot_mode"] = json!("bios");
            t["boot_mode"] = json!("uefi");
        }),
        "boot.mode",
        Severity::Error,
    );
    assert!(m.contains("source BIOS, target UEFI"), "{m}");
    let r = edit(|_, t| {
        t.as_object_mut().unwrap().remove("boot_loader");
    });
    assert!(fires(&r, "boot.loader", Severity::Error).contains("none found"));
    let m = fires(
        &edit(|_, t| t["boot_loader"] = json!("syslinux")),
        "boot.loader",
        Severity::Error,
    );
    assert!(m.contains("syslinux"), "{m}");
    quiet(&edit(|_, t| t["boot_loader"] = json!("systemd-boot")));
}

fn vol(mp: &str, fs: &str, used: u64, free: u64) -> Value {
    json!({"mount_point": mp, "fs_type": fs, "size_bytes": used + free, "used_bytes": used, "free_bytes": free})
}

#[test]
fn volumes_same_mount_point_and_type() {
    let m = fires(
        &edit(|_, t| t["volumes"][0]["fs_type"] = json!("xfs")),
        "volume./.fs",
        Severity::Error,
    );
    assert!(m.contains("source ext4, target xfs"), "{m}");
    let r = edit(|s, _| {
        s["volumes"]
            .as_array_mut()
            .unwrap()
            .push(vol("/home", "ext4", 4096, 4096))
    });
    let m = fires(&r, "volume./home.fs", Severity::Error);
    assert!(m.contains("/home") && m.contains("no target volume"), "{m}");
    // A volume without data needs no counterpart.
    let r = edit(|s, _| {
        s["volumes"]
            .as_array_mut()
            .unwrap()
            .push(vol("/scratch", "xfs", 0, 4096))
    });
    quiet(&r);
    assert!(r.get("volume./scratch.fs").is_none());
    // With the counterpart in place it is quiet.
    quiet(&edit(|s, t| {
        s["volumes"]
            .as_array_mut()
            .unwrap()
            .push(vol("/home", "ext4", 4096, 4096));
        t["volumes"]
            .as_array_mut()
            .unwrap()
            .push(vol("/home", "ext4", 0, 1 << 30));
    }));
}

/// Source: / 10 MiB used + 5 MiB free, /home 3 MiB + 2 MiB, /data (not a
/// system path) 7 MiB + 1 MiB. All volumes: 28 MiB; used system data: 13 MiB.
fn capacity(avail: u64, reclaim: Option<u64>) -> Report {
    const M: u64 = 1 << 20;
    edit(|s, t| {
        s["volumes"] = json!([
            vol("/", "ext4", 10 * M, 5 * M),
            vol("/home", "ext4", 3 * M, 2 * M),
            vol("/data", "ext4", 7 * M, M)
        ]);
        t["volumes"] = json!([
            vol("/", "ext4", M, avail),
            vol("/home", "ext4", 0, M),
            vol("/data", "ext4", 0, M)
        ]);
        t["staging"] = json!({"path": "/var/lib/standin/staging", "mount_point": "/", "free_bytes": avail, "same_fs_as_root": true});
        if let Some(r) = reclaim {
            t["reclaimable_bytes"] = json!(r);
        }
    })
}

#[test]
fn capacity_three_steps_with_exact_bytes() {
    const M: u64 = 1 << 20;
    let (full, sys) = (28 * M, 13 * M);
    assert_eq!(full, 29360128);
    assert_eq!(sys, 13631488);
    let head = |avail: u64| {
        format!(
            "staging filesystem / (for /var/lib/standin/staging) has {} free",
            bytes(avail)
        )
    };

    // Step 1: everything fits, used and free.
    let r = capacity(full, None);
    quiet(&r);
    let m = &r.get("capacity.staging").unwrap().message;
    assert_eq!(
        m,
        &format!("{}; all source volumes need {}", head(full), bytes(full))
    );
    assert!(m.contains("29360128 bytes"), "{m}");

    // Step 2: one byte short of all volumes, used system data fits.
    let m = fires(
        &capacity(full - 1, None),
        "capacity.staging",
        Severity::Warning,
    );
    assert_eq!(
        m,
        format!(
            "{}: {} short of all source volumes ({}), but holds the used data of the system paths ({})",
            head(full - 1),
            bytes(1),
            bytes(full),
            bytes(sys)
        )
    );
    assert!(
        m.contains("1 bytes short") && m.contains("(13631488 bytes"),
        "{m}"
    );
    let m = fires(&capacity(sys, None), "capacity.staging", Severity::Warning);
    assert!(
        m.contains(&format!(
            "{} short of all source volumes",
            bytes(full - sys)
        )),
        "{m}"
    );

    // Step 3: fits only with the bytes reclaimable from an earlier attempt.
    let m = fires(
        &capacity(10 * M, Some(3 * M)),
        "capacity.staging",
        Severity::Warning,
    );
    assert_eq!(
        m,
        format!(
            "{}, {} short of the used data of the system paths ({}); with {} reclaimable from an earlier failover attempt it fits",
            head(10 * M),
            bytes(3 * M),
            bytes(sys),
            bytes(3 * M)
        )
    );
    assert!(m.contains("3145728 bytes"), "{m}");

    // Shortfall: an error stating the bytes missing.
    let m = fires(
        &capacity(10 * M, Some(3 * M - 4096)),
        "capacity.staging",
        Severity::Error,
    );
    assert_eq!(
        m,
        format!(
            "{} and {} reclaimable; the used data of the system paths needs {}: {} missing",
            head(10 * M),
            bytes(3 * M - 4096),
            bytes(sys),
            bytes(4096)
        )
    );
    assert!(m.contains("4096 bytes (4.0 KiB) missing"), "{m}");
    let m = fires(&capacity(M, None), "capacity.staging", Severity::Error);
    assert!(m.contains(&format!("{} missing", bytes(12 * M))), "{m}");
}

#[test]
fn staging_on_root_filesystem() {
    let r = edit(|_, t| {
        t["volumes"]
            .as_array_mut()
            .unwrap()
            .push(vol("/srv", "ext4", 0, 1 << 40));
        t["staging"] = json!({"path": "/srv/standin", "mount_point": "/srv", "free_bytes": 1u64 << 40, "same_fs_as_root": false});
    });
    let m = fires(&r, "staging.same-fs", Severity::Error);
    assert!(m.contains("/srv/standin is on /srv"), "{m}");
    let f = r.get("staging.same-fs").unwrap();
    assert!(f.fix.auto);
    assert!(
        f.fix.description.contains("/var/lib/standin/staging"),
        "{f:#?}"
    );
    // With /var on its own volume the fix picks a path outside it.
    let r = edit(|_, t| {
        t["volumes"]
            .as_array_mut()
            .unwrap()
            .push(vol("/var", "ext4", 0, 1 << 40));
        t["staging"] = json!({"path": "/var/lib/standin/staging", "mount_point": "/var", "free_bytes": 1u64 << 40, "same_fs_as_root": false});
    });
    let f = r.get("staging.same-fs").unwrap();
    assert_eq!(f.severity, Severity::Error);
    assert!(f.fix.description.contains("/srv/standin/staging"), "{f:#?}");
}

#[test]
fn nic_mapping_and_count() {
    let m = fires(
        &edit(|_, t| t["nics"] = json!([])),
        "nic.map",
        Severity::Error,
    );
    assert!(m.contains("no source NIC"), "{m}");
    let m = fires(
        &edit(|s, _| {
            s["nics"].as_array_mut().unwrap().push(
                json!({"name": "eth1", "mac": null, "addresses": ["198.18.0.9/24", "fd00::9/64"]}),
            )
        }),
        "nic.count",
        Severity::Warning,
    );
    assert!(m.contains("eth1 (198.18.0.9/24, fd00::9/64)"), "{m}");
    // Different names still map, in order.
    let r = edit(|_, t| t["nics"][0]["name"] = json!("ens3"));
    quiet(&r);
    assert!(r.get("nic.map").unwrap().message.contains("eth0→ens3"));
}

#[test]
fn services_that_failover_removes() {
    let r = edit(|s, t| {
        s["services"] = json!(["ssh.service"]);
        t["services"] = json!(["ssh.service", "apache2.service", "standin-target.service"]);
    });
    let m = fires(&r, "services.target-running", Severity::Warning);
    assert!(m.ends_with("removes: apache2.service"), "{m}");
    assert!(r.get("services.target-running").unwrap().fix.auto);
    quiet(&edit(|s, t| {
        s["services"] = json!(["ssh.service", "apache2.service"]);
        t["services"] = json!(["apache2.service"]);
    }));
    // Already recorded in the state directory: quiet.
    quiet(&edit(|_, t| {
        t["services"] = json!(["apache2.service"]);
        t["services_to_stop"] = json!(["apache2.service"]);
    }));
}

#[test]
fn hostnames() {
    let m = fires(
        &edit(|s, t| t["hostname"] = s["hostname"].clone()),
        "hostname",
        Severity::Warning,
    );
    assert!(m.contains("same host name"), "{m}");
    let r = edit(|_, _| {});
    assert!(r
        .get("hostname")
        .unwrap()
        .message
        .contains("target standby"));
}

#[test]
fn standin_versions() {
    let m = fires(
        &edit(|_, t| t["standin_version"] = json!("1.2.0")),
        "version.compat",
        Severity::Error,
    );
    assert!(m.contains("target 1.2.0"), "{m}");
    let r = edit(|_, t| {
        t.as_object_mut().unwrap().remove("standin_version");
    });
    assert!(fires(&r, "version.compat", Severity::Error).contains("unknown"));
    quiet(&edit(|s, t| {
        s["standin_version"] = json!("0.1.0");
        t["standin_version"] = json!("0.1.9");
    }));
}
