//! Services, host names and standin versions.

use crate::fixes::Fix;
use crate::profile::Profile;
use crate::report::{Finding, Severity};

pub(super) fn services(s: &Profile, t: &Profile, f: &mut Vec<Finding>) {
    let id = "services.target-running";
    let Some(ts) = &t.services else {
        f.push(Finding::new(
            id,
            Severity::Ok,
            "target services unknown (not in its profile)",
        ));
        return;
    };
    let empty = Vec::new();
    let ss = s.services.as_ref().unwrap_or(&empty);
    let removed: Vec<String> = ts
        .iter()
        .filter(|u| !ss.contains(u) && !u.starts_with("standin") && !t.services_to_stop.contains(u))
        .cloned()
        .collect();
    if removed.is_empty() {
        let msg = if t.services_to_stop.is_empty() {
            "no target service would be removed by failover".to_string()
        } else {
            format!(
                "target services stopped and disabled when protection starts: {}",
                t.services_to_stop.join(", ")
            )
        };
        f.push(Finding::new(id, Severity::Ok, msg));
    } else {
        f.push(
            Finding::new(
                id,
                Severity::Warning,
                format!(
                    "target runs services the source does not, which failover removes: {}",
                    removed.join(", ")
                ),
            )
            .details(format!(
                "source runs {} service(s), target {}; after failover the target runs the source's system",
                ss.len(),
                ts.len()
            ))
            .auto(Fix::StopServicesOnProtect { services: removed }),
        );
    }
}

pub(super) fn hostname(s: &Profile, t: &Profile, f: &mut Vec<Finding>) {
    let both = format!("source {}, target {}", s.hostname, t.hostname);
    if s.hostname.eq_ignore_ascii_case(&t.hostname) {
        f.push(
            Finding::new(
                "hostname",
                Severity::Warning,
                format!("same host name on both: {both}"),
            )
            .details("both machines answer to one name while both run: a name clash")
            .manual("give the target its own host name"),
        );
    } else {
        f.push(
            Finding::new(
                "hostname",
                Severity::Ok,
                format!("host names differ: {both}"),
            )
            .details(format!(
                "after failover the target takes the source's name {}",
                s.hostname
            )),
        );
    }
}

/// `major.minor` (for 0.x) or `major` that must agree.
fn compat_key(v: &str) -> Option<String> {
    let mut it = v.trim_start_matches('v').split('.');
    let major: u64 = it.next()?.parse().ok()?;
    let minor: u64 = it.next().unwrap_or("0").parse().ok()?;
    Some(if major == 0 {
        format!("0.{minor}")
    } else {
        major.to_string()
    })
}

pub(super) fn version(s: &Profile, t: &Profile, f: &mut Vec<Finding>) {
    let id = "version.compat";
    let sv = s.standin_version.as_deref().unwrap_or("unknown");
    let tv = t.standin_version.as_deref().unwrap_or("unknown");
    let both = format!("source {sv}, target {tv}");
    match (compat_key(sv), compat_key(tv)) {
        (Some(a), Some(b)) if a == b => {
            f.push(Finding::new(id, Severity::Ok, format!("standin versions compatible: {both}")))
        }
        (Some(_), Some(_)) => f.push(
            Finding::new(id, Severity::Error, format!("standin versions incompatible: {both}"))
                .details("the replication protocol changes between major versions (minor versions before 1.0)")
                .manual(format!("install standin {sv} on the target")),
        ),
        _ => f.push(
            Finding::new(id, Severity::Error, format!("standin version unknown: {both}"))
                .details("a profile without standin_version cannot be checked")
                .manual("collect both profiles with `standin profile --json`"),
        ),
    }
}
