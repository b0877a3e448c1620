//! OS, CPU, memory, boot, host name and services.

use std::path::Path;

use crate::facts::Facts;
use crate::profile::{BootMode, Os};

/// Parse `KEY=value` lines (os-release style, quotes removed).
pub(crate) fn parse_env(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.starts_with('#') {
                return None;
            }
            let (k, v) = l.split_once('=')?;
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            Some((k.trim().to_string(), v.to_string()))
        })
        .collect()
}

pub(crate) fn os(facts: &dyn Facts, notes: &mut Vec<String>) -> Os {
    let text = facts
        .read_text(&facts.in_root("etc/os-release"))
        .or_else(|| facts.read_text(&facts.in_root("usr/lib/os-release")));
    let Some(text) = text else {
        notes.push("no etc/os-release or usr/lib/os-release: OS unknown".into());
        return Os {
            id: "unknown".into(),
            version_id: String::new(),
            pretty_name: None,
        };
    };
    let env = parse_env(&text);
    let get = |k: &str| env.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    let version_id = get("VERSION_ID").unwrap_or_else(|| {
        notes.push("os-release has no VERSION_ID (a rolling or testing release)".into());
        String::new()
    });
    Os {
        id: get("ID").unwrap_or_else(|| "linux".into()),
        version_id,
        pretty_name: get("PRETTY_NAME"),
    }
}

pub(crate) fn cpu(facts: &dyn Facts, notes: &mut Vec<String>) -> (u32, Option<String>) {
    let Some(text) = facts.read_text(Path::new("/proc/cpuinfo")) else {
        notes.push("/proc/cpuinfo unreadable: CPU count unknown (0)".into());
        return (0, None);
    };
    let mut count = 0;
    let mut model = None;
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "processor" => count += 1,
            "model name" | "Processor" | "cpu model" if model.is_none() => {
                model = Some(v.trim().to_string());
            }
            _ => {}
        }
    }
    (count, model)
}

pub(crate) fn memory(facts: &dyn Facts, notes: &mut Vec<String>) -> u64 {
    let kib = facts.read_text(Path::new("/proc/meminfo")).and_then(|t| {
        t.lines().find_map(|l| {
            let rest = l.strip_prefix("MemTotal:")?;
            rest.split_whitespace().next()?.parse::<u64>().ok()
        })
    });
    match kib {
        Some(k) => k * 1024,
        None => {
            notes.push("/proc/meminfo has no MemTotal: memory unknown (0)".into());
            0
        }
    }
}

pub(crate) fn boot_mode(facts: &dyn Facts) -> BootMode {
    if facts.exists(Path::new("/sys/firmware/efi")) {
        BootMode::Uefi
    } else {
        BootMode::Bios
    }
}

/// Boot loaders the failover swap knows how to keep.
pub const KNOWN_BOOT_LOADERS: &[&str] = &["grub", "systemd-boot"];

pub(crate) fn boot_loader(facts: &dyn Facts, notes: &mut Vec<String>) -> Option<String> {
    let any = |paths: &[&str]| paths.iter().any(|p| facts.exists(&facts.in_root(p)));
    if any(&[
        "boot/efi/EFI/systemd",
        "efi/EFI/systemd",
        "boot/loader/loader.conf",
        "efi/loader/loader.conf",
        "boot/efi/loader/loader.conf",
    ]) {
        return Some("systemd-boot".into());
    }
    if any(&[
        "boot/grub/grub.cfg",
        "boot/grub2/grub.cfg",
        "boot/grub",
        "boot/grub2",
    ]) {
        return Some("grub".into());
    }
    if any(&["boot/extlinux", "boot/syslinux", "extlinux"]) {
        return Some("syslinux".into());
    }
    notes.push("no boot loader found (looked for grub, systemd-boot, syslinux under boot/)".into());
    None
}

pub(crate) fn hostname(facts: &dyn Facts, notes: &mut Vec<String>) -> (String, Option<String>) {
    let live = facts.root() == Path::new("/");
    let mut name = facts
        .read_text(&facts.in_root("etc/hostname"))
        .filter(|s| !s.is_empty())
        .map(|s| s.lines().next().unwrap_or("").trim().to_string());
    if name.is_none() && live {
        name = facts.read_text(Path::new("/proc/sys/kernel/hostname"));
    }
    let full = name.unwrap_or_else(|| {
        notes.push("no etc/hostname: host name unknown".into());
        "localhost".into()
    });
    let (host, mut domain) = match full.split_once('.') {
        Some((h, d)) => (h.to_string(), Some(d.to_string())),
        None => (full.clone(), None),
    };
    if domain.is_none() && live {
        domain = facts
            .read_text(Path::new("/proc/sys/kernel/domainname"))
            .filter(|d| !d.is_empty() && d != "(none)");
    }
    if domain.is_none() {
        domain = facts
            .read_text(&facts.in_root("etc/resolv.conf"))
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let mut w = l.split_whitespace();
                    match w.next() {
                        Some("domain") | Some("search") => w.next().map(str::to_string),
                        _ => None,
                    }
                })
            });
    }
    (host, domain)
}

pub(crate) fn services(facts: &dyn Facts, notes: &mut Vec<String>) -> Option<Vec<String>> {
    if facts.root() != Path::new("/") {
        return enabled_services(facts, notes);
    }
    let args = [
        "list-units",
        "--type=service",
        "--state=running",
        "--plain",
        "--no-legend",
        "--no-pager",
    ];
    match facts.run("systemctl", &args) {
        Ok(out) if out.success => {
            let text = String::from_utf8_lossy(&out.stdout);
            let mut v: Vec<String> = text
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .filter(|u| u.ends_with(".service"))
                .map(str::to_string)
                .collect();
            v.sort();
            Some(v)
        }
        Ok(_) => {
            notes.push(
                "systemctl could not list services (systemd not running): services empty".into(),
            );
            Some(Vec::new())
        }
        Err(_) => {
            notes.push("systemctl not found: services empty".into());
            Some(Vec::new())
        }
    }
}

/// For a tree that is not running: the services enabled in it.
fn enabled_services(facts: &dyn Facts, notes: &mut Vec<String>) -> Option<Vec<String>> {
    let base = facts.in_root("etc/systemd/system");
    let Ok(dirs) = facts.read_dir(&base) else {
        notes.push("tree has no etc/systemd/system: no enabled services".into());
        return Some(Vec::new());
    };
    let mut v = Vec::new();
    for d in dirs.iter().filter(|d| d.ends_with(".wants")) {
        for unit in facts.read_dir(&base.join(d)).unwrap_or_default() {
            if unit.ends_with(".service") {
                v.push(unit);
            }
        }
    }
    v.sort();
    v.dedup();
    notes.push("services of a tree are those enabled in it (it is not running)".into());
    Some(v)
}
