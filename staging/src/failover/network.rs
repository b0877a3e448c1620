//! Network identity at failover, for ifupdown (`/etc/network/interfaces`),
//! systemd-networkd (`/etc/systemd/network/*.network|.link|.netdev`) and
//! NetworkManager (`/etc/NetworkManager/system-connections/*`).
//!
//! - `retain`: the target's files are kept paths (equal to the target's).
//! - `source`: the source's files, with source NIC names and MACs replaced
//!   by the target's per `nic_map` (names not in the map stay).
//! - `add`: the target's files, plus the source's addresses on the mapped
//!   NICs: extra `iface` stanzas (ifupdown), `Address=` lines in the
//!   target's matching `[Network]` section (networkd), `addressN=` lines in
//!   the target's matching connection (NetworkManager).

use super::config::TargetConfig;

/// Network configuration locations (relative to a root).
pub const NETWORK_PATHS: &[&str] = &[
    "etc/network/interfaces",
    "etc/network/interfaces.d",
    "etc/systemd/network",
    "etc/NetworkManager/system-connections",
];

/// Which format a file under [`NETWORK_PATHS`] is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Ifupdown,
    Networkd,
    NetworkManager,
}

/// The format of a relative path, if it is a network configuration file.
pub fn format_of(rel: &str) -> Option<Format> {
    if rel == "etc/network/interfaces" || rel.starts_with("etc/network/interfaces.d/") {
        Some(Format::Ifupdown)
    } else if rel.starts_with("etc/systemd/network/")
        && [".network", ".link", ".netdev"]
            .iter()
            .any(|s| rel.ends_with(s))
    {
        Some(Format::Networkd)
    } else if rel.starts_with("etc/NetworkManager/system-connections/") {
        Some(Format::NetworkManager)
    } else {
        None
    }
}

fn map_list(v: &str, cfg: &TargetConfig) -> String {
    v.split_whitespace()
        .map(|n| cfg.map_nic(n).to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The source's file with its NICs mapped to the target's.
pub fn rewrite(format: Format, text: &str, cfg: &TargetConfig) -> String {
    let mut section = String::new();
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let t = line.trim();
        let new = match format {
            Format::Ifupdown => {
                let mut tok: Vec<String> = t.split_whitespace().map(str::to_string).collect();
                match tok.first().map(String::as_str) {
                    Some("auto" | "allow-hotplug" | "allow-auto") => {
                        for x in tok.iter_mut().skip(1) {
                            *x = cfg.map_nic(x).to_string();
                        }
                        Some(format!("{indent}{}", tok.join(" ")))
                    }
                    Some("iface" | "mapping") if tok.len() > 1 => {
                        tok[1] = cfg.map_nic(&tok[1]).to_string();
                        Some(format!("{indent}{}", tok.join(" ")))
                    }
                    Some("hwaddress") if tok.len() > 1 => {
                        let last = tok.len() - 1;
                        tok[last] = cfg.map_nic(&tok[last]).to_string();
                        Some(format!("{indent}{}", tok.join(" ")))
                    }
                    _ => None,
                }
            }
            Format::Networkd | Format::NetworkManager => {
                if t.starts_with('[') {
                    section = t.to_string();
                    None
                } else if let Some((k, v)) = t.split_once('=') {
                    let key = k.trim();
                    let hit = match format {
                        Format::Networkd => {
                            section == "[Match]"
                                && (key == "Name"
                                    || key == "MACAddress"
                                    || key == "PermanentMACAddress")
                        }
                        _ => {
                            (section == "[connection]" && key == "interface-name")
                                || (section == "[ethernet]" && key == "mac-address")
                        }
                    };
                    hit.then(|| format!("{indent}{key}={}", map_list(v.trim(), cfg)))
                } else {
                    None
                }
            }
        };
        out.push_str(new.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Values of `key` in `section` of an INI-style file.
fn ini_values(text: &str, section: &str, key: &str) -> Vec<String> {
    let mut cur = String::new();
    let mut out = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            cur = t.to_string();
        } else if let Some((k, v)) = t.split_once('=') {
            if cur == section && k.trim() == key {
                out.push(v.trim().to_string());
            }
        }
    }
    out
}

/// Insert `lines` at the end of `section` (appending the section when missing).
fn ini_insert(text: &str, section: &str, lines: &[String]) -> String {
    let all: Vec<&str> = text.lines().collect();
    let start = all.iter().position(|l| l.trim() == section);
    let mut out: Vec<String> = all.iter().map(|s| s.to_string()).collect();
    match start {
        Some(s) => {
            let mut end = all[s + 1..]
                .iter()
                .position(|l| l.trim().starts_with('['))
                .map(|i| s + 1 + i)
                .unwrap_or(all.len());
            while end > s + 1 && all[end - 1].trim().is_empty() {
                end -= 1;
            }
            for (i, l) in lines.iter().enumerate() {
                out.insert(end + i, l.clone());
            }
        }
        None => {
            out.push(String::new());
            out.push(section.to_string());
            out.extend(lines.iter().cloned());
        }
    }
    out.join("\n") + "\n"
}

/// ifupdown `add`: the target's file plus the source's stanzas (except `lo`)
/// for the mapped NICs.
pub fn add_ifupdown(target: &str, source: &str, cfg: &TargetConfig) -> Option<String> {
    let mapped = rewrite(Format::Ifupdown, source, cfg);
    let mut extra = String::new();
    let mut inside = false;
    for line in mapped.lines() {
        let t = line.trim();
        let first = t.split_whitespace().next().unwrap_or("");
        match first {
            "iface" => {
                inside = t.split_whitespace().nth(1) != Some("lo");
                if inside {
                    extra.push_str(line);
                    extra.push('\n');
                }
            }
            "auto" | "allow-hotplug" | "allow-auto" | "mapping" | "source" | "source-directory" => {
                inside = false
            }
            _ if inside && !t.is_empty() => {
                extra.push_str(line);
                extra.push('\n');
            }
            _ => {}
        }
    }
    if extra.is_empty() {
        return None;
    }
    let mut out = target.to_string();
    if !out.ends_with('\n') && !out.is_empty() {
        out.push('\n');
    }
    out.push_str("\n# Added by standin failover: the source's addresses on the mapped NICs.\n");
    out.push_str(&extra);
    Some(out)
}

/// networkd `add`: the source's `Address=` lines for the NICs this target
/// file matches, added to its `[Network]` section.
pub fn add_networkd(target: &str, sources: &[String], cfg: &TargetConfig) -> Option<String> {
    let names: Vec<String> = ini_values(target, "[Match]", "Name")
        .iter()
        .flat_map(|v| v.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .collect();
    let mut lines = Vec::new();
    for s in sources {
        let src_names = ini_values(s, "[Match]", "Name");
        let hit = src_names
            .iter()
            .flat_map(|v| v.split_whitespace())
            .any(|n| names.iter().any(|t| t == cfg.map_nic(n)));
        if hit {
            for sec in ["[Network]", "[Address]"] {
                for a in ini_values(s, sec, "Address") {
                    let l = format!("Address={a}");
                    if !lines.contains(&l)
                        && !ini_values(target, "[Network]", "Address").contains(&a)
                    {
                        lines.push(l);
                    }
                }
            }
        }
    }
    (!lines.is_empty()).then(|| ini_insert(target, "[Network]", &lines))
}

/// NetworkManager `add`: the source's `addressN=` lines for the NIC this
/// target connection binds, added with the next free numbers.
pub fn add_nm(target: &str, sources: &[String], cfg: &TargetConfig) -> Option<String> {
    let names = ini_values(target, "[connection]", "interface-name");
    let mut out = target.to_string();
    let mut changed = false;
    for sec in ["[ipv4]", "[ipv6]"] {
        let mut lines = Vec::new();
        let mut next = 1
            + (1..64)
                .filter(|n| !ini_values(&out, sec, &format!("address{n}")).is_empty())
                .max()
                .unwrap_or(0);
        for s in sources {
            let hit = ini_values(s, "[connection]", "interface-name")
                .iter()
                .any(|n| names.iter().any(|t| t == cfg.map_nic(n)));
            if !hit {
                continue;
            }
            for n in 1..64 {
                for v in ini_values(s, sec, &format!("address{n}")) {
                    lines.push(format!("address{next}={v}"));
                    next += 1;
                }
            }
        }
        if !lines.is_empty() {
            out = ini_insert(&out, sec, &lines);
            changed = true;
        }
    }
    changed.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> TargetConfig {
        let mut c = TargetConfig::default();
        c.nic_map.insert("eth0".into(), "ens3".into());
        c.nic_map
            .insert("52:54:00:00:00:01".into(), "52:54:00:00:00:99".into());
        c
    }

    #[test]
    fn rewrites_names_and_macs() {
        let i = "auto lo eth0\niface lo inet loopback\niface eth0 inet static\n    address 198.18.0.1/24\n";
        let r = rewrite(Format::Ifupdown, i, &cfg());
        assert!(r.contains("auto lo ens3\n"));
        assert!(r.contains("iface ens3 inet static\n    address 198.18.0.1/24\n"));
        let n =
            "[Match]\nName=eth0\nMACAddress=52:54:00:00:00:01\n[Network]\nAddress=198.18.0.1/24\n";
        let r = rewrite(Format::Networkd, n, &cfg());
        assert!(r.contains("Name=ens3\nMACAddress=52:54:00:00:00:99\n"));
        let m = "[connection]\nid=x\ninterface-name=eth0\n[ipv4]\naddress1=198.18.0.1/24\n";
        assert!(rewrite(Format::NetworkManager, m, &cfg()).contains("interface-name=ens3"));
    }

    #[test]
    fn adds_addresses() {
        let t = "auto ens3\niface ens3 inet dhcp\n";
        let s = "auto lo eth0\niface lo inet loopback\niface eth0 inet static\n    address 198.18.0.1/24\n";
        let r = add_ifupdown(t, s, &cfg()).unwrap();
        assert!(r.starts_with(t));
        assert!(r.contains("iface ens3 inet static\n    address 198.18.0.1/24\n"));
        assert!(!r.contains("loopback"));
        let t = "[Match]\nName=ens3\n\n[Network]\nDHCP=yes\n";
        let s = vec!["[Match]\nName=eth0\n[Network]\nAddress=198.18.0.1/24\n".to_string()];
        let r = add_networkd(t, &s, &cfg()).unwrap();
        assert!(
            r.contains("[Network]\nDHCP=yes\nAddress=198.18.0.1/24\n"),
            "{r}"
        );
        let t =
            "[connection]\ninterface-name=ens3\n[ipv4]\nmethod=manual\naddress1=198.18.0.2/24\n";
        let s =
            vec!["[connection]\ninterface-name=eth0\n[ipv4]\naddress1=198.18.0.1/24\n".to_string()];
        let r = add_nm(t, &s, &cfg()).unwrap();
        assert!(
            r.contains("address1=198.18.0.2/24\naddress2=198.18.0.1/24"),
            "{r}"
        );
    }
}
