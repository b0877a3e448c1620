//! Rules on profiles collected from fixed facts.

use crate::collect::tests::machine;
use crate::collect::{collect, CollectOptions};
use crate::fixes::Fix;
use crate::profile::Profile;
use crate::report::Severity;
use crate::rules::{validate, Options};

fn profile(edit: impl FnOnce(&mut crate::facts::MapFacts)) -> Profile {
    let mut f = machine();
    edit(&mut f);
    collect(
        &f,
        &CollectOptions {
            standin_version: "0.1.0".into(),
            ..Default::default()
        },
    )
}

/// A target: the same machine with a bigger root filesystem (it must hold
/// all the source's volumes), edited further.
fn target(edit: impl FnOnce(&mut crate::facts::MapFacts)) -> Profile {
    let mut f = machine();
    let big = crate::facts::FsStats {
        size: 400 << 30,
        used: 10 << 30,
        free: 390 << 30,
    };
    f.statvfs.insert("/".into(), big);
    f.file("/etc/hostname", "standby\n");
    edit(&mut f);
    collect(
        &f,
        &CollectOptions {
            standin_version: "0.1.0".into(),
            ..Default::default()
        },
    )
}

fn loud(s: &Profile, t: &Profile) -> Vec<(String, Severity)> {
    validate(s, t, &Options::default())
        .findings
        .into_iter()
        .filter(|f| f.severity != Severity::Ok)
        .map(|f| (f.id, f.severity))
        .collect()
}

#[test]
fn twin_machines_only_clash_on_the_name() {
    let s = profile(|_| {});
    let t = target(|f| {
        f.file("/etc/hostname", "web1\n");
    });
    assert_eq!(loud(&s, &t), [("hostname".to_string(), Severity::Warning)]);
    let t = target(|_| {});
    assert!(loud(&s, &t).is_empty(), "{:?}", loud(&s, &t));
}

#[test]
fn collected_differences_fire_their_rules() {
    let s = profile(|_| {});
    let t = target(|f| {
        f.file("/etc/os-release", "ID=debian\nVERSION_ID=11\n")
            .file("/proc/cpuinfo", "processor : 0\n")
            .file("/proc/meminfo", "MemTotal: 4000000 kB\n");
        f.files
            .remove(std::path::Path::new("/sys/firmware/efi/systab"));
        f.files.remove(std::path::Path::new(
            "/boot/efi/EFI/systemd/systemd-bootx64.efi",
        ));
        f.command(
            "systemctl list-units --type=service --state=running --plain --no-legend --no-pager",
            true,
            "ssh.service loaded active running x\ncron.service loaded active running x\nmysql.service loaded active running x\n",
        );
    });
    let got = loud(&s, &t);
    for want in [
        ("os.match", Severity::Error),
        ("cpu.count", Severity::Warning),
        ("memory.size", Severity::Warning),
        ("boot.mode", Severity::Error),
        ("boot.loader", Severity::Error),
        ("services.target-running", Severity::Warning),
    ] {
        assert!(
            got.contains(&(want.0.to_string(), want.1)),
            "missing {want:?} in {got:?}"
        );
    }
    assert_eq!(got.len(), 6, "{got:?}");
    let r = validate(&s, &t, &Options::default());
    assert!(r.get("memory.size").unwrap().message.contains("-50.0%"));
    assert_eq!(
        r.auto_fixes(),
        vec![Fix::StopServicesOnProtect {
            services: vec!["mysql.service".into()]
        }]
    );
}

#[test]
fn home_on_xfs_cannot_take_ext4() {
    let s = profile(|f| {
        let mi = String::from_utf8(f.files[std::path::Path::new("/proc/self/mountinfo")].clone())
            .unwrap();
        f.file(
            "/proc/self/mountinfo",
            &mi.replace("- xfs /dev/mapper/vg-home", "- ext4 /dev/mapper/vg-home"),
        );
    });
    let t = target(|_| {});
    let r = validate(&s, &t, &Options::default());
    let f = r.get("volume./home.fs").unwrap();
    assert_eq!(f.severity, Severity::Error);
    assert_eq!(
        f.message,
        "filesystem types differ at /home: source ext4, target xfs"
    );
    assert!(
        r.get("volume./boot/efi.fs").is_none(),
        "the ESP is the target's own and holds nothing here"
    );
}
