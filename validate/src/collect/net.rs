//! Network interfaces: hardware from /sys/class/net, addresses from
//! `ip -j addr` (or /proc/net/if_inet6), or from the tree's network
//! configuration when profiling a tree.

use std::collections::BTreeMap;
use std::path::Path;

use crate::facts::Facts;
use crate::profile::Nic;

pub(crate) fn nics(facts: &dyn Facts, notes: &mut Vec<String>) -> Vec<Nic> {
    let live = facts.root() == Path::new("/");
    let base = Path::new("/sys/class/net");
    let names = facts.read_dir(base).unwrap_or_else(|_| {
        notes.push("/sys/class/net unreadable: no NICs".into());
        Vec::new()
    });
    let live_addrs = live_addresses(facts, notes);
    let conf_addrs = if live {
        BTreeMap::new()
    } else {
        configured_addresses(facts)
    };
    let mut out = Vec::new();
    for name in names.iter().filter(|n| n.as_str() != "lo") {
        let dir = base.join(name);
        let has_device = facts.exists(&dir.join("device"));
        let addresses = if live {
            live_addrs.get(name).cloned().unwrap_or_default()
        } else {
            conf_addrs.get(name).cloned().unwrap_or_default()
        };
        let global = addresses
            .iter()
            .any(|a| !a.starts_with("fe80:") && !a.starts_with("127."));
        if !has_device && !global {
            continue; // virtual interface without addresses
        }
        out.push(Nic {
            name: name.clone(),
            mac: facts
                .read_text(&dir.join("address"))
                .filter(|m| !m.is_empty()),
            addresses,
            state: facts.read_text(&dir.join("operstate")),
            driver: facts
                .read_link(&dir.join("device/driver"))
                .ok()
                .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned())),
        });
    }
    if !live {
        for (name, addrs) in conf_addrs {
            if !out.iter().any(|n| n.name == name) && name != "lo" {
                notes.push(format!(
                    "{name} is configured in the tree but not present on this machine"
                ));
                out.push(Nic {
                    name,
                    mac: None,
                    addresses: addrs,
                    state: None,
                    driver: None,
                });
            }
        }
    }
    out
}

/// Addresses per interface on the running machine.
fn live_addresses(facts: &dyn Facts, notes: &mut Vec<String>) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Ok(out) = facts.run("ip", &["-j", "addr"]) {
        if let Ok(serde_json::Value::Array(ifs)) = serde_json::from_slice(&out.stdout) {
            for i in ifs {
                let Some(name) = i.get("ifname").and_then(|n| n.as_str()) else {
                    continue;
                };
                let e = map.entry(name.to_string()).or_default();
                for a in i
                    .get("addr_info")
                    .and_then(|a| a.as_array())
                    .into_iter()
                    .flatten()
                {
                    if let (Some(l), Some(p)) =
                        (a.get("local").and_then(|l| l.as_str()), a.get("prefixlen"))
                    {
                        e.push(format!("{l}/{p}"));
                    }
                }
            }
            return map;
        }
    }
    notes.push(
        "`ip -j addr` unavailable (install iproute2): only IPv6 addresses from /proc/net/if_inet6"
            .into(),
    );
    if let Some(text) = facts.read_text(Path::new("/proc/net/if_inet6")) {
        for l in text.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            if w.len() < 6 || w[0].len() != 32 {
                continue;
            }
            let groups: Vec<String> = (0..8)
                .map(|g| {
                    format!(
                        "{:x}",
                        u16::from_str_radix(&w[0][g * 4..g * 4 + 4], 16).unwrap_or(0)
                    )
                })
                .collect();
            let prefix = u8::from_str_radix(w[2], 16).unwrap_or(128);
            let addr: std::net::Ipv6Addr = groups
                .join(":")
                .parse()
                .unwrap_or(std::net::Ipv6Addr::UNSPECIFIED);
            map.entry(w[5].to_string())
                .or_default()
                .push(format!("{addr}/{prefix}"));
        }
    }
    map
}

/// Static addresses configured in the tree: ifupdown, systemd-networkd and
/// NetworkManager key files.
pub(crate) fn configured_addresses(facts: &dyn Facts) -> BTreeMap<String, Vec<String>> {
    let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Some(text) = facts.read_text(&facts.in_root("etc/network/interfaces")) {
        let mut cur: Option<String> = None;
        for l in text.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                ["iface", name, ..] => {
                    cur = Some(name.to_string());
                    map.entry(name.to_string()).or_default();
                }
                ["address", a, ..] => {
                    if let Some(c) = &cur {
                        map.entry(c.clone()).or_default().push(a.to_string());
                    }
                }
                ["netmask", m, ..] => {
                    if let (Some(c), Some(bits)) = (&cur, mask_bits(m)) {
                        if let Some(last) = map.entry(c.clone()).or_default().last_mut() {
                            if !last.contains('/') {
                                last.push_str(&format!("/{bits}"));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let nd = facts.in_root("etc/systemd/network");
    for f in facts
        .read_dir(&nd)
        .unwrap_or_default()
        .iter()
        .filter(|f| f.ends_with(".network"))
    {
        let Some(text) = facts.read_text(&nd.join(f)) else {
            continue;
        };
        let (mut name, mut addrs) = (None, Vec::new());
        for l in text.lines() {
            if let Some((k, v)) = l.split_once('=') {
                match k.trim() {
                    "Name" => name = v.split_whitespace().next().map(str::to_string),
                    "Address" => addrs.push(v.trim().to_string()),
                    _ => {}
                }
            }
        }
        if let Some(n) = name {
            map.entry(n).or_default().extend(addrs);
        }
    }
    let nm = facts.in_root("etc/NetworkManager/system-connections");
    for f in facts.read_dir(&nm).unwrap_or_default() {
        let Some(text) = facts.read_text(&nm.join(&f)) else {
            continue;
        };
        let (mut name, mut addrs) = (None, Vec::new());
        for l in text.lines() {
            if let Some((k, v)) = l.split_once('=') {
                let k = k.trim();
                if k == "interface-name" {
                    name = Some(v.trim().to_string());
                } else if k.starts_with("address") {
                    addrs.push(v.split(',').next().unwrap_or("").trim().to_string());
                }
            }
        }
        if let Some(n) = name {
            map.entry(n).or_default().extend(addrs);
        }
    }
    map
}

fn mask_bits(mask: &str) -> Option<u32> {
    let ip: std::net::Ipv4Addr = mask.parse().ok()?;
    Some(u32::from(ip).count_ones())
}
