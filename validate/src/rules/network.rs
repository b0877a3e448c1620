//! NIC mapping.

use crate::profile::{Nic, Profile};
use crate::report::{Finding, Severity};

/// Source NIC → target NIC: same names first, then the rest in order.
pub fn map_nics<'a>(s: &'a [Nic], t: &'a [Nic]) -> Vec<(&'a Nic, Option<&'a Nic>)> {
    let mut used = vec![false; t.len()];
    let mut out: Vec<(&Nic, Option<usize>)> = s
        .iter()
        .map(|n| {
            let i = t.iter().position(|x| x.name == n.name);
            if let Some(i) = i {
                used[i] = true;
            }
            (n, i)
        })
        .collect();
    for entry in out.iter_mut().filter(|e| e.1.is_none()) {
        if let Some(i) = used.iter().position(|u| !u) {
            used[i] = true;
            entry.1 = Some(i);
        }
    }
    out.into_iter()
        .map(|(n, i)| (n, i.map(|i| &t[i])))
        .collect()
}

fn names(n: &[Nic]) -> String {
    if n.is_empty() {
        return "none".into();
    }
    n.iter()
        .map(|n| n.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

pub(super) fn nics(s: &Profile, t: &Profile, f: &mut Vec<Finding>) {
    let both = format!(
        "source {} ({}), target {} ({})",
        s.nics.len(),
        names(&s.nics),
        t.nics.len(),
        names(&t.nics)
    );
    let map = map_nics(&s.nics, &t.nics);
    let mapped: Vec<String> = map
        .iter()
        .filter_map(|(a, b)| b.map(|b| format!("{}→{}", a.name, b.name)))
        .collect();
    let none_map = !s.nics.is_empty() && mapped.is_empty();
    if none_map {
        f.push(
            Finding::new(
                "nic.map",
                Severity::Error,
                format!("no source NIC can be mapped to a target NIC: {both}"),
            )
            .details(
                "after failover the target needs a network interface for the source's addresses",
            )
            .manual("add a network interface to the target"),
        );
    } else {
        f.push(Finding::new(
            "nic.map",
            Severity::Ok,
            format!(
                "NICs map: {} ({both})",
                if mapped.is_empty() {
                    "nothing to map".into()
                } else {
                    mapped.join(", ")
                }
            ),
        ));
    }
    if none_map {
        return; // nic.map already says it; nic.count would only repeat it
    }
    let lost: Vec<&Nic> = map
        .iter()
        .filter(|(_, b)| b.is_none())
        .map(|(a, _)| *a)
        .collect();
    if s.nics.len() > t.nics.len() {
        let addrs: Vec<String> = lost
            .iter()
            .map(|n| {
                format!(
                    "{} ({})",
                    n.name,
                    if n.addresses.is_empty() {
                        "no addresses".into()
                    } else {
                        n.addresses.join(", ")
                    }
                )
            })
            .collect();
        f.push(
            Finding::new(
                "nic.count",
                Severity::Warning,
                format!("more source NICs than target NICs: {both}; will not come over: {}", addrs.join("; ")),
            )
            .manual("add network interfaces to the target, or accept that these addresses stay away after failover"),
        );
    } else {
        f.push(Finding::new(
            "nic.count",
            Severity::Ok,
            format!("enough target NICs: {both}"),
        ));
    }
}
