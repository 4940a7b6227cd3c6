//! Where the indicators come from, read in place:
//!
//! - a node's **audit log** (`<data dir>/audit`, offline): segment by segment, one record at
//!   a time, as `tongban audit verify` reads it. Only exchanges count (not state changes).
//! - a department's **application store** (`<data dir>/applications`, the department
//!   stopped: sled takes one process): one application at a time.
//!
//! Nothing is copied: a report run twice over the same records gives the same figures.

use std::path::{Path, PathBuf};

use tongban_catalog::{cst_date, Calendar};
use tongban_gateway::audit::log;
use tongban_proto::audit::v1::{ChangeKind, Side};
use tongban_proto::crosscity::v2::State;

use crate::indicators::{AppFacts, CallFacts, Report};
use crate::ReportError;

/// The departments' service, whose `Submit` calls the audit side of the report counts.
pub const CROSSCITY_V2: &str = "tongban.crosscity.v2.CrossCityService";

fn source(path: &Path, message: impl std::fmt::Display) -> ReportError {
    ReportError::Source {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Reads the audit log of the node whose data directory is `data_dir` into `report`.
pub fn read_audit(report: &mut Report, data_dir: &Path) -> Result<(), ReportError> {
    let dir = data_dir.join("audit");
    if !dir.is_dir() {
        return Err(source(
            &dir,
            "no audit log here (give a node's data directory)",
        ));
    }
    for (first, path) in log::segments(&dir).map_err(|e| source(&dir, e))? {
        log::read_segment(first, &path, |e| {
            if let Some(r) = e.entry.record {
                let side = Side::try_from(r.side).unwrap_or(Side::Unspecified);
                report.seen(&r.node_city, r.started_at_ms);
                if let Some(c) = &r.state_change {
                    match ChangeKind::try_from(c.kind).unwrap_or(ChangeKind::Unspecified) {
                        ChangeKind::NodeStarted => {
                            report.node_event(&r.node_city, r.started_at_ms, true)
                        }
                        ChangeKind::NodeStopped => {
                            report.node_event(&r.node_city, r.started_at_ms, false)
                        }
                        ChangeKind::PeerLinkUp => {
                            report.link_event(&r.node_city, &c.object, r.started_at_ms, true)
                        }
                        ChangeKind::PeerLinkDown => {
                            report.link_event(&r.node_city, &c.object, r.started_at_ms, false)
                        }
                        _ => {}
                    }
                }
                if side == Side::Node || side == Side::Unspecified {
                    return true;
                }
                let to = if r.target_city.is_empty() {
                    "?".to_string()
                } else {
                    r.target_city.clone()
                };
                let served = matches!(side, Side::Provider | Side::Local)
                    && r.service == CROSSCITY_V2
                    && r.method == "Submit"
                    && r.grpc_status == 0;
                report.add_call(&CallFacts {
                    day: cst_date(r.started_at_ms),
                    item: if r.catalog_code.is_empty() {
                        "-".to_string()
                    } else {
                        r.catalog_code.clone()
                    },
                    from: r.caller_city.clone(),
                    to,
                    citizen: r.subject_pseudonym.clone(),
                    refusal: (!r.refusal_reason.is_empty()).then(|| r.refusal_reason.clone()),
                    submit_served: served,
                });
            }
            true
        })
        .map_err(|e| source(&path, e))?;
    }
    Ok(())
}

/// The department stores below `root` (a department's data directory, or a directory
/// holding several, up to three levels down).
pub fn department_dirs(root: &Path) -> Vec<PathBuf> {
    fn walk(d: &Path, depth: u32, out: &mut Vec<PathBuf>) {
        if d.join("applications").is_dir() {
            out.push(d.to_path_buf());
            return;
        }
        if depth == 0 {
            return;
        }
        let Ok(entries) = std::fs::read_dir(d) else {
            return;
        };
        let mut dirs: Vec<PathBuf> = entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for p in dirs {
            walk(&p, depth - 1, out);
        }
    }
    let mut out = Vec::new();
    walk(root, 3, &mut out);
    out
}

/// Reads the applications of the department whose data directory is `dir` into `report`
/// (working days by `calendar`).
pub async fn read_department(
    report: &mut Report,
    dir: &Path,
    calendar: &Calendar,
) -> Result<(), ReportError> {
    let store = tongban_crosscity::store::Store::open(dir)
        .await
        .map_err(|e| source(dir, e))?;
    store
        .each(|s| {
            let received = cst_date(s.received_at_ms);
            let at = |state: State| {
                s.history
                    .iter()
                    .find(|h| h.state == state as i32)
                    .map(|h| cst_date(h.at_ms))
            };
            let completed = match (s.state(), at(State::Completed)) {
                (State::Completed, Some(done)) => {
                    let on_time = done.to_string() <= s.due_date;
                    Some((calendar.working_days_between(received, done), on_time))
                }
                _ => None,
            };
            report.add_application(&AppFacts {
                item: s.code.clone(),
                from: s.origin_city.clone(),
                to: s.provider_city.clone(),
                citizen: s.subject.clone(),
                received,
                accepted: at(State::Accepted).is_some(),
                rejected: (s.state() == State::Rejected).then(|| s.rejection_reason.clone()),
                withdrawn: s.state() == State::Withdrawn,
                completed,
            });
        })
        .map_err(|e| source(dir, e))
}

/// Reads the verdicts and decisions of the medical result registries whose data
/// directories are `dirs` into `report`. A decision names a report, not a patient: its
/// patient is the one the report's verdicts name (the origin registry's records, when read
/// here); a decision whose report was never queried here counts as a citizen of its own.
pub async fn read_medical(report: &mut Report, dirs: &[PathBuf]) -> Result<(), ReportError> {
    use std::collections::HashMap;
    use tongban_proto::medical::v1::{Decision, RetestReason};
    let mut stores = Vec::new();
    for dir in dirs {
        let store = tongban_medical::store::Store::open(dir)
            .await
            .map_err(|e| source(dir, e))?;
        stores.push((dir, store));
    }
    let mut patients: HashMap<(String, String), String> = HashMap::new();
    for (dir, store) in &stores {
        store
            .each_verdict(|v| {
                let item = if v.item.is_empty() {
                    "-"
                } else {
                    v.item.as_str()
                };
                if !v.report_id.is_empty() {
                    patients
                        .entry((v.held_by.clone(), v.report_id.clone()))
                        .or_insert_with(|| v.patient.clone());
                }
                report.add_medical(
                    cst_date(v.at_ms),
                    (item, &v.held_by, &v.asked_by),
                    &v.patient,
                    &crate::indicators::MedicalFact::Verdict {
                        eligible: v.eligible,
                        reasons: v.reasons.clone(),
                    },
                );
            })
            .map_err(|e| source(dir, e))?;
    }
    for (dir, store) in &stores {
        store
            .each_decision(|d| {
                let decided_in = d.caller.split('/').next().unwrap_or_default().to_string();
                let recognised = d.decision == Decision::Accepted as i32;
                let reason = RetestReason::try_from(d.reason)
                    .map(|r| r.as_str_name().to_ascii_lowercase())
                    .unwrap_or_default();
                let patient = patients
                    .get(&(d.origin_city.clone(), d.report_id.clone()))
                    .cloned()
                    .unwrap_or_else(|| format!("report:{}/{}", d.origin_city, d.report_id));
                report.add_medical(
                    cst_date(d.at_ms),
                    (&d.item, &d.origin_city, &decided_in),
                    &patient,
                    &crate::indicators::MedicalFact::Decision { recognised, reason },
                );
            })
            .map_err(|e| source(dir, e))?;
    }
    Ok(())
}

/// Whether `dir` is a medical result registry's data directory.
pub fn is_medical(dir: &Path) -> bool {
    dir.join("results").is_dir()
}
