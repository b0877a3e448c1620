//! Human-readable form of a profile.

use crate::profile::Profile;
use crate::rules::bytes;

/// A profile as aligned `key: value` lines.
pub fn profile_text(p: &Profile) -> String {
    let mut o = String::new();
    let mut kv = |k: &str, v: String| o.push_str(&format!("{k:<16}{v}\n"));
    kv(
        "os",
        format!(
            "{} {}{}",
            p.os.id,
            p.os.version_id,
            p.os.pretty_name
                .as_ref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        ),
    );
    if let Some(k) = &p.kernel {
        kv("kernel", k.clone());
    }
    kv("arch", p.arch.clone());
    kv(
        "cpus",
        format!(
            "{}{}",
            p.cpus,
            p.cpu_model
                .as_ref()
                .map(|m| format!(" × {m}"))
                .unwrap_or_default()
        ),
    );
    kv("memory", bytes(p.memory_bytes));
    kv(
        "boot",
        format!(
            "{}, loader {}",
            p.boot_mode,
            p.boot_loader.as_deref().unwrap_or("none found")
        ),
    );
    kv(
        "hostname",
        match &p.domain {
            Some(d) => format!("{} (domain {d})", p.hostname),
            None => p.hostname.clone(),
        },
    );
    for v in &p.volumes {
        let mut flags = Vec::new();
        for (on, f) in [(v.lvm, "lvm"), (v.md, "md"), (v.dm, "dm")] {
            if on {
                flags.push(f);
            }
        }
        kv(
            "volume",
            format!(
                "{} {} on {}: size {}, used {}, free {}{}{}",
                v.mount_point,
                v.fs_type,
                v.source.as_deref().unwrap_or("?"),
                bytes(v.size_bytes),
                bytes(v.used_bytes),
                bytes(v.free_bytes),
                v.fs_uuid
                    .as_ref()
                    .map(|u| format!(", uuid {u}"))
                    .unwrap_or_default(),
                if flags.is_empty() {
                    String::new()
                } else {
                    format!(" [{}]", flags.join(","))
                }
            ),
        );
    }
    for n in &p.nics {
        kv(
            "nic",
            format!(
                "{} mac {} state {} driver {}: {}",
                n.name,
                n.mac.as_deref().unwrap_or("?"),
                n.state.as_deref().unwrap_or("?"),
                n.driver.as_deref().unwrap_or("?"),
                if n.addresses.is_empty() {
                    "no addresses".into()
                } else {
                    n.addresses.join(", ")
                }
            ),
        );
    }
    match &p.services {
        Some(s) if !s.is_empty() => kv("services", s.join(", ")),
        Some(_) => kv("services", "none".into()),
        None => kv("services", "unknown".into()),
    }
    if let Some(s) = &p.staging {
        kv(
            "staging",
            format!(
                "{} on {} ({}), {} free",
                s.path.display(),
                s.mount_point,
                if s.same_fs_as_root {
                    "root filesystem"
                } else {
                    "not the root filesystem"
                },
                bytes(s.free_bytes)
            ),
        );
    }
    if let Some(r) = p.reclaimable_bytes {
        kv("reclaimable", bytes(r));
    }
    if let Some(v) = &p.standin_version {
        kv("standin", v.clone());
    }
    for n in &p.notes {
        kv("note", n.clone());
    }
    o
}
