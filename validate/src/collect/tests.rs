//! Collection from fixed facts.

use std::path::{Path, PathBuf};

use crate::facts::{FsStats, MapFacts, StatInfo};
use crate::profile::BootMode;

use super::{collect, CollectOptions};

const GIB: u64 = 1 << 30;

pub(crate) fn machine() -> MapFacts {
    let mut f = MapFacts::new();
    f.file("/etc/os-release", "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nNAME=\"Debian GNU/Linux\"\nVERSION_ID=\"12\"\nID=debian\n")
        .file("/etc/hostname", "web1.example.org\n")
        .file("/proc/cpuinfo", "processor\t: 0\nmodel name\t: Test CPU\n\nprocessor\t: 1\nmodel name\t: Test CPU\n\nprocessor\t: 2\n\nprocessor\t: 3\n")
        .file("/proc/meminfo", "MemTotal:        8000000 kB\nMemFree:  1 kB\n")
        .file(
            "/proc/self/mountinfo",
            "22 27 0:21 / /proc rw - proc proc rw\n\
             27 1 8:2 / / rw,relatime - ext4 /dev/sda2 rw\n\
             28 27 253:0 / /home rw - xfs /dev/mapper/vg-home rw\n\
             29 27 8:1 / /boot/efi rw - vfat /dev/sda1 rw\n\
             30 27 0:25 / /run rw - tmpfs tmpfs rw\n\
             31 27 8:2 /srv/x /mnt/bind\\040dir rw - ext4 /dev/sda2 rw\n",
        )
        .file("/sys/firmware/efi/systab", "x")
        .file("/boot/efi/EFI/systemd/systemd-bootx64.efi", "x")
        .link("/sys/dev/block/8:2", "../../devices/pci/block/sda/sda2")
        .link("/sys/dev/block/253:0", "../../devices/virtual/block/dm-0")
        .link("/sys/dev/block/8:1", "../../devices/pci/block/sda/sda1")
        .file("/sys/dev/block/253:0/dm/uuid", "LVM-abcdef\n")
        .file("/sys/dev/block/8:1/uevent", "DEVTYPE=partition\nPARTUUID=1111-2222\n")
        .link("/dev/disk/by-uuid/aaaa-bbbb", "../../sda2")
        .link("/dev/disk/by-partuuid/cccc-dddd", "../../sda2")
        .file("/sys/class/net/eth0/address", "52:54:00:12:34:56\n")
        .file("/sys/class/net/eth0/operstate", "up\n")
        .link("/sys/class/net/eth0/device", "../../../virtio0")
        .link("/sys/class/net/eth0/device/driver", "../../../bus/virtio/drivers/virtio_net")
        .file("/sys/class/net/lo/address", "00:00:00:00:00:00\n")
        .file("/sys/class/net/dummy0/address", "aa:aa:aa:aa:aa:aa\n")
        .command(
            "ip -j addr",
            true,
            r#"[{"ifname":"lo","addr_info":[{"local":"127.0.0.1","prefixlen":8}]},
                {"ifname":"eth0","addr_info":[{"family":"inet","local":"198.18.0.1","prefixlen":24},{"local":"fe80::1","prefixlen":64}]}]"#,
        )
        .command(
            "systemctl list-units --type=service --state=running --plain --no-legend --no-pager",
            true,
            "ssh.service loaded active running OpenBSD Secure Shell server\ncron.service loaded active running cron\n",
        )
        .command("blkid -p -o export /dev/dm-0", true, "DEVNAME=/dev/dm-0\nUUID=HOME-UUID\nTYPE=xfs\n")
        .command("lsblk -J -o MAJ:MIN,UUID,PARTTYPE,PARTUUID", true, r#"{"blockdevices":[{"maj:min":"8:0","uuid":null,"children":[{"maj:min":"8:1","uuid":"ESP-UUID","parttype":"c12a7328-f81f-11d2-ba4b-00a0c93ec93b","partuuid":null}]}]}"#);
    for (p, size, used, free) in [
        ("/", 100, 40, 55),
        ("/home", 50, 10, 40),
        ("/boot/efi", 1, 0, 1),
    ] {
        f.statvfs.insert(
            PathBuf::from(p),
            FsStats {
                size: size * GIB,
                used: used * GIB,
                free: free * GIB,
            },
        );
    }
    f.stats.insert(
        PathBuf::from("/"),
        StatInfo {
            dev: 0x802,
            is_dir: true,
            allocated: 0,
            ino: 2,
        },
    );
    f.stats.insert(
        PathBuf::from("/var"),
        StatInfo {
            dev: 0x802,
            is_dir: true,
            allocated: 0,
            ino: 3,
        },
    );
    f
}

fn opts() -> CollectOptions {
    CollectOptions {
        standin_version: "0.1.0".into(),
        ..Default::default()
    }
}

#[test]
fn live_machine() {
    let p = collect(&machine(), &opts());
    assert_eq!(
        (p.os.id.as_str(), p.os.version_id.as_str()),
        ("debian", "12")
    );
    assert_eq!(
        p.os.pretty_name.as_deref(),
        Some("Debian GNU/Linux 12 (bookworm)")
    );
    assert_eq!(p.arch, "x86_64");
    assert_eq!(p.kernel.as_deref(), Some("6.1.0-test"));
    assert_eq!((p.cpus, p.cpu_model.as_deref()), (4, Some("Test CPU")));
    assert_eq!(p.memory_bytes, 8_000_000 * 1024);
    assert_eq!(p.boot_mode, BootMode::Uefi);
    assert_eq!(p.boot_loader.as_deref(), Some("systemd-boot"));
    assert_eq!(
        (p.hostname.as_str(), p.domain.as_deref()),
        ("web1", Some("example.org"))
    );
    let mps: Vec<&str> = p.volumes.iter().map(|v| v.mount_point.as_str()).collect();
    assert_eq!(
        mps,
        ["/", "/boot/efi", "/home"],
        "proc, run and the bind mount are left out"
    );
    let root = &p.volumes[0];
    assert_eq!(
        (root.size_bytes, root.used_bytes, root.free_bytes),
        (100 * GIB, 40 * GIB, 55 * GIB)
    );
    assert_eq!(root.fs_uuid.as_deref(), Some("aaaa-bbbb"));
    assert_eq!(root.part_uuid.as_deref(), Some("cccc-dddd"));
    assert!(!root.dm && !root.lvm && !root.md);
    let esp = &p.volumes[1];
    assert_eq!(esp.fs_uuid.as_deref(), Some("ESP-UUID"));
    assert_eq!(
        esp.part_type.as_deref(),
        Some("c12a7328-f81f-11d2-ba4b-00a0c93ec93b")
    );
    assert_eq!(esp.part_uuid.as_deref(), Some("1111-2222"), "from uevent");
    let home = &p.volumes[2];
    assert_eq!(home.fs_uuid.as_deref(), Some("HOME-UUID"), "from blkid");
    assert!(home.dm && home.lvm && home.fs_type == "xfs");
    assert_eq!(
        p.nics.len(),
        1,
        "lo and address-less virtual dummy0 left out: {:?}",
        p.nics
    );
    let n = &p.nics[0];
    assert_eq!(n.mac.as_deref(), Some("52:54:00:12:34:56"));
    assert_eq!(n.addresses, ["198.18.0.1/24", "fe80::1/64"]);
    assert_eq!(
        (n.state.as_deref(), n.driver.as_deref()),
        (Some("up"), Some("virtio_net"))
    );
    assert_eq!(
        p.services.as_deref(),
        Some(&["cron.service".to_string(), "ssh.service".to_string()][..])
    );
    let st = p.staging.as_ref().unwrap();
    assert_eq!(st.path, Path::new("/var/lib/standin/staging"));
    assert!(st.same_fs_as_root);
    assert_eq!((st.mount_point.as_str(), st.free_bytes), ("/", 55 * GIB));
    assert_eq!(p.standin_version.as_deref(), Some("0.1.0"));
}

#[test]
fn missing_facts_are_notes_not_crashes() {
    let f = MapFacts::new();
    let p = collect(&f, &opts());
    assert_eq!(p.os.id, "unknown");
    assert_eq!((p.cpus, p.memory_bytes), (0, 0));
    assert!(p.volumes.is_empty() && p.nics.is_empty());
    assert_eq!(p.boot_mode, BootMode::Bios);
    assert_eq!(p.services.as_deref(), Some(&[][..]));
    for want in [
        "os-release",
        "cpuinfo",
        "MemTotal",
        "mountinfo",
        "systemctl not found",
        "boot loader",
        "ip -j addr",
    ] {
        assert!(
            p.notes.iter().any(|n| n.contains(want)),
            "no note about {want}: {:?}",
            p.notes
        );
    }
}

#[test]
fn systemctl_failing_gives_empty_services_with_note() {
    let mut f = machine();
    f.command(
        "systemctl list-units --type=service --state=running --plain --no-legend --no-pager",
        false,
        "",
    );
    let p = collect(&f, &opts());
    assert_eq!(p.services.as_deref(), Some(&[][..]));
    assert!(
        p.notes.iter().any(|n| n.contains("systemd not running")),
        "{:?}",
        p.notes
    );
}

#[test]
fn ipv6_fallback_without_ip() {
    let mut f = machine();
    f.commands.remove("ip -j addr");
    f.file(
        "/proc/net/if_inet6",
        "fe800000000000000000000000000001 02 40 20 80     eth0\n",
    );
    let p = collect(&f, &opts());
    assert_eq!(p.nics[0].addresses, ["fe80::1/64"]);
}

#[test]
fn tree_facts_come_from_root() {
    let mut f = machine();
    f.root = PathBuf::from("/t");
    f.file("/t/etc/os-release", "ID=ubuntu\nVERSION_ID=\"22.04\"\n")
        .file("/t/etc/hostname", "tree\n")
        .file("/t/etc/resolv.conf", "search corp.example\n")
        .file("/t/etc/fstab", "# c\nUUID=1234 / ext4 defaults 0 1\nUUID=5678 /data xfs defaults 0 2\nproc /proc proc defaults 0 0\n/swap none swap sw 0 0\n")
        .file("/t/data/file", "0123456789")
        .file("/t/usr/bin/x", "abc")
        .file("/t/boot/grub/grub.cfg", "menuentry")
        .file("/t/etc/network/interfaces", "auto eth0\niface eth0 inet static\n  address 198.18.0.7\n  netmask 255.255.255.0\n")
        .file("/t/etc/systemd/network/10-eth1.network", "[Match]\nName=eth1\n[Network]\nAddress=198.18.1.7/24\n")
        .file("/t/etc/NetworkManager/system-connections/eth2.nmconnection", "[connection]\ninterface-name=eth2\n[ipv4]\naddress1=198.18.2.7/24,198.18.2.1\n")
        .link("/t/etc/systemd/system/multi-user.target.wants/nginx.service", "/lib/systemd/system/nginx.service");
    f.statvfs.insert(
        PathBuf::from("/t"),
        FsStats {
            size: 100 * GIB,
            used: 40 * GIB,
            free: 55 * GIB,
        },
    );
    f.stats.insert(
        PathBuf::from("/t"),
        StatInfo {
            dev: 0x802,
            is_dir: true,
            allocated: 0,
            ino: 9,
        },
    );
    let p = collect(&f, &opts());
    assert_eq!(
        (p.os.id.as_str(), p.os.version_id.as_str(), p.os.major()),
        ("ubuntu", "22.04", "22")
    );
    assert_eq!(
        (p.hostname.as_str(), p.domain.as_deref()),
        ("tree", Some("corp.example"))
    );
    assert_eq!(p.boot_loader.as_deref(), Some("grub"));
    let mps: Vec<&str> = p.volumes.iter().map(|v| v.mount_point.as_str()).collect();
    assert_eq!(mps, ["/", "/data"]);
    assert_eq!(p.volumes[1].fs_type, "xfs");
    assert_eq!(p.volumes[1].fs_uuid.as_deref(), Some("5678"));
    assert_eq!(
        p.volumes[1].used_bytes, 10,
        "a tree's used bytes are its files'"
    );
    assert_eq!(p.volumes[1].free_bytes, 55 * GIB);
    let addr = |n: &str| {
        p.nics
            .iter()
            .find(|x| x.name == n)
            .map(|x| x.addresses.clone())
    };
    assert_eq!(addr("eth0"), Some(vec!["198.18.0.7/24".to_string()]));
    assert_eq!(addr("eth1"), Some(vec!["198.18.1.7/24".to_string()]));
    assert_eq!(addr("eth2"), Some(vec!["198.18.2.7/24".to_string()]));
    assert_eq!(
        p.services.as_deref(),
        Some(&["nginx.service".to_string()][..])
    );
}

#[test]
fn state_dir_sets_staging_path_and_reclaimable() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("target-config.json"),
        r#"{"staging_path":"/home/staging","services_to_stop":["a.service"]}"#,
    )
    .unwrap();
    let mut f = machine();
    let rb = dir.path().join("rollback/x");
    f.files.insert(rb, vec![0; 4096]);
    f.stats.insert(
        PathBuf::from("/home"),
        StatInfo {
            dev: 0xfd00,
            is_dir: true,
            allocated: 0,
            ino: 5,
        },
    );
    let o = CollectOptions {
        state_dir: Some(dir.path().to_path_buf()),
        ..opts()
    };
    let p = collect(&f, &o);
    let st = p.staging.unwrap();
    assert_eq!(st.path, Path::new("/home/staging"));
    assert_eq!(st.mount_point, "/home");
    assert!(!st.same_fs_as_root);
    assert_eq!(st.free_bytes, 40 * GIB);
    assert_eq!(p.reclaimable_bytes, Some(4096));
    assert_eq!(p.services_to_stop, ["a.service"]);
}
