//! The recognition rules as versioned data (`deploy/medical/*.toml`): the recognised items
//! with their validity periods, and which institution is accredited for which item when.
//! [`Rules::verdict`] applies them to one result and lists every rule it failed.

use std::collections::BTreeSet;

use serde::Deserialize;
use time::{Date, OffsetDateTime, UtcOffset};
use tongban_proto::medical::v1::{ReportKind, ReportStatus, Result as LabResult, Verdict};

/// The Jinan–Qingdao rules shipped with Tongban (illustrative lists).
pub const EMBEDDED: &str = include_str!("../../../deploy/medical/jinan-qingdao.toml");

const DAY_MS: i64 = 86_400_000;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RulesError {
    #[error("cannot read rules {path}: {message}")]
    Io { path: String, message: String },
    #[error("rules are not valid toml: {0}")]
    Syntax(String),
    #[error("rules entry {entry}: {message}")]
    Entry { entry: String, message: String },
}

/// A recognised item.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Item {
    pub code: String,
    pub name: String,
    pub kind: String,
    #[serde(default)]
    pub loinc: Vec<String>,
    #[serde(default)]
    pub modality: Option<String>,
    #[serde(default)]
    pub body_site: Option<String>,
    pub validity_days: u32,
}

/// An institution's accreditation for items over a window of dates (CST, both included).
#[derive(Debug, Clone)]
pub struct Accreditation {
    pub institution: String,
    pub name: String,
    /// `None`: every item.
    pub items: Option<BTreeSet<String>>,
    pub from_ms: i64,
    /// The end of the `until` day.
    pub until_ms: i64,
    pub from: String,
    pub until: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccreditation {
    institution: String,
    name: String,
    items: Vec<String>,
    from: String,
    until: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRules {
    region: String,
    version: String,
    items: Vec<toml::Value>,
    #[serde(default)]
    accreditations: Vec<toml::Value>,
}

/// Loaded, validated rules.
#[derive(Debug, Clone)]
pub struct Rules {
    pub region: String,
    pub version: String,
    pub items: Vec<Item>,
    pub accreditations: Vec<Accreditation>,
}

const CST: UtcOffset = match UtcOffset::from_hms(8, 0, 0) {
    Ok(o) => o,
    Err(_) => UtcOffset::UTC,
};

fn day_start_ms(d: Date) -> i64 {
    let t = d.midnight().assume_offset(CST);
    i64::try_from(t.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// A CST date of a Unix-milliseconds instant, for messages.
pub fn cst_date(ms: i64) -> String {
    let t = OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms);
    t.to_offset(CST).date().to_string()
}

fn cst_time(ms: i64) -> String {
    let t = OffsetDateTime::UNIX_EPOCH + time::Duration::milliseconds(ms);
    let t = t.to_offset(CST);
    format!(
        "{} {:02}:{:02}:{:02}",
        t.date(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

impl Rules {
    pub fn embedded() -> Result<Rules, RulesError> {
        Rules::parse(EMBEDDED)
    }

    pub fn load_or_embedded(path: Option<&std::path::Path>) -> Result<Rules, RulesError> {
        match path {
            None => Rules::embedded(),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|e| RulesError::Io {
                    path: p.display().to_string(),
                    message: e.to_string(),
                })?;
                Rules::parse(&text)
            }
        }
    }

    pub fn parse(text: &str) -> Result<Rules, RulesError> {
        let raw: RawRules = toml::from_str(text).map_err(|e| RulesError::Syntax(e.to_string()))?;
        let mut items: Vec<Item> = Vec::new();
        for (i, v) in raw.items.into_iter().enumerate() {
            let label = v
                .get("code")
                .and_then(|c| c.as_str())
                .map_or(format!("items[{i}]"), |c| format!("items[{i}] ({c})"));
            let err = |message: String| RulesError::Entry {
                entry: label.clone(),
                message,
            };
            let item: Item = v
                .try_into()
                .map_err(|e: toml::de::Error| err(e.message().to_string()))?;
            if items.iter().any(|x| x.code == item.code) {
                return Err(err(format!("duplicate item code `{}`", item.code)));
            }
            if item.validity_days == 0 {
                return Err(err("validity_days must be at least 1".into()));
            }
            match item.kind.as_str() {
                "laboratory" if item.loinc.is_empty() => {
                    return Err(err("a laboratory item needs at least one loinc code".into()))
                }
                "imaging" if item.modality.is_none() || item.body_site.is_none() => {
                    return Err(err("an imaging item needs modality and body_site".into()))
                }
                "laboratory" | "imaging" => {}
                other => {
                    return Err(err(format!(
                        "unknown kind `{other}` (expected laboratory or imaging)"
                    )))
                }
            }
            items.push(item);
        }
        let mut accreditations = Vec::new();
        for (i, v) in raw.accreditations.into_iter().enumerate() {
            let label = v
                .get("institution")
                .and_then(|c| c.as_str())
                .map_or(format!("accreditations[{i}]"), |c| {
                    format!("accreditations[{i}] ({c})")
                });
            let err = |message: String| RulesError::Entry {
                entry: label.clone(),
                message,
            };
            let a: RawAccreditation = v
                .try_into()
                .map_err(|e: toml::de::Error| err(e.message().to_string()))?;
            tongban_catalog::FieldType::CreditCode
                .check(&a.institution)
                .map_err(|m| err(format!("institution: {m}")))?;
            let date = |key: &str, s: &str| {
                tongban_catalog::FieldType::Date
                    .check(s)
                    .ok()
                    .and_then(|()| {
                        Date::parse(s, time::macros::format_description!("[year]-[month]-[day]"))
                            .ok()
                    })
                    .ok_or_else(|| err(format!("{key} `{s}` is not a date YYYY-MM-DD")))
            };
            let from = date("from", &a.from)?;
            let until = date("until", &a.until)?;
            if until < from {
                return Err(err("until is before from".into()));
            }
            let items_set = if a.items.iter().any(|x| x == "*") {
                None
            } else {
                for code in &a.items {
                    if !items.iter().any(|x| &x.code == code) {
                        return Err(err(format!("unknown item `{code}`")));
                    }
                }
                Some(a.items.iter().cloned().collect())
            };
            accreditations.push(Accreditation {
                institution: a.institution,
                name: a.name,
                items: items_set,
                from_ms: day_start_ms(from),
                until_ms: day_start_ms(until) + DAY_MS - 1,
                from: a.from,
                until: a.until,
            });
        }
        Ok(Rules {
            region: raw.region,
            version: raw.version,
            items,
            accreditations,
        })
    }

    /// The recognised item a result maps to: by LOINC (laboratory), by modality and body
    /// site (imaging).
    pub fn item_of(&self, kind: ReportKind, r: &LabResult) -> Option<&Item> {
        self.items.iter().find(|i| match kind {
            ReportKind::Laboratory => {
                i.kind == "laboratory" && !r.loinc.is_empty() && i.loinc.contains(&r.loinc)
            }
            ReportKind::Imaging => {
                i.kind == "imaging"
                    && i.modality.as_deref() == Some(r.modality.as_str())
                    && i.body_site.as_deref() == Some(r.body_site.to_ascii_lowercase().as_str())
            }
            ReportKind::Unspecified => false,
        })
    }

    pub fn item(&self, code: &str) -> Option<&Item> {
        self.items.iter().find(|i| i.code == code)
    }

    /// The verdict on one result of a report, as of `valid_at_ms`; also the end of its
    /// validity (0 when its item is not recognised).
    pub fn verdict(
        &self,
        kind: ReportKind,
        status: ReportStatus,
        collected_at_ms: i64,
        institution: &str,
        r: &LabResult,
        valid_at_ms: i64,
    ) -> (Option<&Item>, Verdict, i64) {
        let mut reasons = Vec::new();
        let item = self.item_of(kind, r);
        let mut valid_until = 0;
        match item {
            None => reasons.push(format!(
                "item {} is not on the recognition list of {}",
                describe(r),
                self.region
            )),
            Some(item) => {
                valid_until = collected_at_ms + i64::from(item.validity_days) * DAY_MS;
                if valid_at_ms > valid_until {
                    reasons.push(format!(
                        "past its validity: {} is valid {} days from {}, until {} (CST)",
                        item.code,
                        item.validity_days,
                        cst_time(collected_at_ms),
                        cst_time(valid_until)
                    ));
                }
                let accredited = self.accreditations.iter().any(|a| {
                    a.institution == institution
                        && a.items.as_ref().is_none_or(|s| s.contains(&item.code))
                        && (a.from_ms..=a.until_ms).contains(&collected_at_ms)
                });
                if !accredited {
                    reasons.push(format!(
                        "institution {institution} was not accredited for {} on {}",
                        item.code,
                        cst_date(collected_at_ms)
                    ));
                }
            }
        }
        if !matches!(
            status,
            ReportStatus::Final | ReportStatus::Amended | ReportStatus::Corrected
        ) {
            reasons.push(format!(
                "report status {} is not final, amended or corrected",
                status_name(status)
            ));
        }
        let verdict = Verdict {
            eligible: reasons.is_empty(),
            reasons,
            rules_version: self.version.clone(),
        };
        (item, verdict, valid_until)
    }
}

fn describe(r: &LabResult) -> String {
    if !r.loinc.is_empty() {
        format!("LOINC {}", r.loinc)
    } else if !r.modality.is_empty() {
        format!("{} {}", r.modality, r.body_site)
    } else {
        format!("{} (local code, not mapped)", r.local_code)
    }
}

pub fn status_name(s: ReportStatus) -> &'static str {
    match s {
        ReportStatus::Unspecified => "unspecified",
        ReportStatus::Registered => "registered",
        ReportStatus::Partial => "partial",
        ReportStatus::Preliminary => "preliminary",
        ReportStatus::Final => "final",
        ReportStatus::Amended => "amended",
        ReportStatus::Corrected => "corrected",
        ReportStatus::Appended => "appended",
        ReportStatus::Cancelled => "cancelled",
        ReportStatus::EnteredInError => "entered-in-error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const QILU: &str = "12370000495570024A";
    const COMMUNITY: &str = "12370100MB2836047H";

    fn potassium() -> LabResult {
        LabResult {
            result_id: "1".into(),
            loinc: "2823-3".into(),
            ..Default::default()
        }
    }

    fn at(date: &str, h: i64) -> i64 {
        let d = Date::parse(
            date,
            time::macros::format_description!("[year]-[month]-[day]"),
        )
        .unwrap();
        day_start_ms(d) + h * 3_600_000
    }

    #[test]
    fn embedded_rules_load() {
        let r = Rules::embedded().unwrap();
        assert_eq!(r.item("K").unwrap().validity_days, 7);
        assert_eq!(r.item("HBA1C").unwrap().validity_days, 60);
    }

    #[test]
    fn validity_is_inclusive_to_the_millisecond_and_one_second_past_fails() {
        let r = Rules::embedded().unwrap();
        let collected = at("2026-11-02", 9);
        let limit = collected + 7 * DAY_MS;
        let v = |t| {
            r.verdict(
                ReportKind::Laboratory,
                ReportStatus::Final,
                collected,
                QILU,
                &potassium(),
                t,
            )
            .1
        };
        assert!(v(limit).eligible);
        let past = v(limit + 1000);
        assert!(!past.eligible);
        assert_eq!(past.reasons.len(), 1);
        assert!(
            past.reasons[0].contains("past its validity"),
            "{:?}",
            past.reasons
        );
        assert_eq!(past.rules_version, r.version);
    }

    #[test]
    fn accreditation_window_and_items() {
        let r = Rules::embedded().unwrap();
        let v = |collected, result: &LabResult| {
            r.verdict(
                ReportKind::Laboratory,
                ReportStatus::Final,
                collected,
                COMMUNITY,
                result,
                collected,
            )
            .1
        };
        // The community centre: from 2026-03-01 (CST) for K; the instant before is outside.
        assert!(v(at("2026-03-01", 0), &potassium()).eligible);
        assert!(!v(at("2026-03-01", 0) - 1, &potassium()).eligible);
        // Through the end of 2026-12-31.
        assert!(v(at("2027-01-01", 0) - 1, &potassium()).eligible);
        assert!(!v(at("2027-01-01", 0), &potassium()).eligible);
        // Not accredited for ALT at all.
        let alt = LabResult {
            loinc: "1742-6".into(),
            ..Default::default()
        };
        let no = v(at("2026-06-01", 0), &alt);
        assert!(
            no.reasons
                .iter()
                .any(|m| m.contains("not accredited for ALT")),
            "{no:?}"
        );
    }

    #[test]
    fn statuses_and_unknown_items() {
        let r = Rules::embedded().unwrap();
        let t = at("2026-11-02", 9);
        for s in [
            ReportStatus::Registered,
            ReportStatus::Partial,
            ReportStatus::Preliminary,
            ReportStatus::Appended,
            ReportStatus::Cancelled,
            ReportStatus::EnteredInError,
        ] {
            let v = r
                .verdict(ReportKind::Laboratory, s, t, QILU, &potassium(), t)
                .1;
            assert!(!v.eligible, "{s:?}");
            assert!(v.reasons[0].contains(status_name(s)));
        }
        for s in [
            ReportStatus::Final,
            ReportStatus::Amended,
            ReportStatus::Corrected,
        ] {
            assert!(
                r.verdict(ReportKind::Laboratory, s, t, QILU, &potassium(), t)
                    .1
                    .eligible
            );
        }
        let unknown = LabResult {
            loinc: "99999-9".into(),
            ..Default::default()
        };
        let (item, v, until) = r.verdict(
            ReportKind::Laboratory,
            ReportStatus::Final,
            t,
            QILU,
            &unknown,
            t,
        );
        assert!(item.is_none() && until == 0);
        assert!(v.reasons[0].contains("not on the recognition list"));
    }

    #[test]
    fn malformed_rules_name_the_entry() {
        let bad = EMBEDDED.replacen("validity_days = 7", "validity_days = \"seven\"", 1);
        let e = Rules::parse(&bad).unwrap_err();
        assert!(e.to_string().contains("items[0] (K)"), "{e}");
        let bad = EMBEDDED.replacen("items = [\"K\", \"NA\"", "items = [\"KK\", \"NA\"", 1);
        let e = Rules::parse(&bad).unwrap_err();
        assert!(
            e.to_string().contains("accreditations[2]") && e.to_string().contains("KK"),
            "{e}"
        );
        let bad = EMBEDDED.replacen("code = \"NA\"", "code = \"K\"", 1);
        assert!(Rules::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("duplicate"));
        let bad = EMBEDDED.replacen("from = \"2026-03-01\"", "from = \"2026-02-30\"", 1);
        assert!(Rules::parse(&bad).unwrap_err().to_string().contains("from"));
    }
}
