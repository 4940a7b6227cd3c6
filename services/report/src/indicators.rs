//! The indicators and how they are counted.
//!
//! Applications are counted by the period of their receipt (a cohort): of those received in
//! a period, how many were accepted, rejected (by reason), withdrawn, completed, completed
//! by their statutory due date, and how many working days completion took (median and p90,
//! from a histogram: bounded memory). Refusals at the gateway are counted by the node that
//! refused (each refusal is made by exactly one node), by the period of the call.
//!
//! **Privacy.** Every count keeps up to five distinct citizens (their pseudonyms, never an
//! id). A cell that counts 1 to 4 distinct citizens is suppressed: shown as `<5`, and left
//! out of rates and charts. Events with no citizen (a call about nobody) neither count nor
//! suppress.

use std::collections::BTreeMap;

use serde::Serialize;
use time::{Date, Duration, Month};

/// The least number of distinct citizens a shown cell counts.
pub const MIN_CITIZENS: usize = 5;

/// How the window is cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Period {
    Day,
    Week,
    Month,
}

impl Period {
    pub fn parse(s: &str) -> Option<Period> {
        match s {
            "day" => Some(Period::Day),
            "week" => Some(Period::Week),
            "month" => Some(Period::Month),
            _ => None,
        }
    }

    /// The first day of the period `d` is in (weeks start on Monday).
    pub fn start(self, d: Date) -> Date {
        match self {
            Period::Day => d,
            Period::Week => d - Duration::days(i64::from(d.weekday().number_days_from_monday())),
            Period::Month => Date::from_calendar_date(d.year(), d.month(), 1).unwrap_or(d),
        }
    }

    pub fn label(self, start: Date) -> String {
        match self {
            Period::Day | Period::Week => start.to_string(),
            Period::Month => format!("{}-{:02}", start.year(), u8::from(start.month())),
        }
    }
}

/// Up to [`MIN_CITIZENS`] distinct citizens.
#[derive(Debug, Clone, Default)]
pub struct Distinct(Vec<String>);

impl Distinct {
    fn add(&mut self, who: &str) {
        if !who.is_empty() && self.0.len() < MIN_CITIZENS && !self.0.iter().any(|w| w == who) {
            self.0.push(who.to_string());
        }
    }
}

/// A count and the distinct citizens behind it.
#[derive(Debug, Clone, Default)]
pub struct Count {
    pub n: u64,
    citizens: Distinct,
}

impl Count {
    pub fn add(&mut self, citizen: &str) {
        self.n += 1;
        self.citizens.add(citizen);
    }

    /// Suppressed: it counts 1 to 4 distinct citizens.
    pub fn suppressed(&self) -> bool {
        (1..MIN_CITIZENS).contains(&self.citizens.0.len())
    }

    /// The value to publish: the number, or `None` when suppressed.
    pub fn shown(&self) -> Option<u64> {
        (!self.suppressed()).then_some(self.n)
    }
}

impl Serialize for Count {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.shown() {
            Some(n) => s.serialize_u64(n),
            None => s.serialize_str("<5"),
        }
    }
}

/// Where a row is: the period's first day, the item, the direction.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub period: Date,
    pub item: String,
    pub from: String,
    pub to: String,
}

/// Working days to completion: 0 to 60, and 61 for "more".
const DAYS: usize = 62;

/// The applications received in one period, for one item and direction.
#[derive(Debug, Clone)]
pub struct Applications {
    pub submitted: Count,
    pub accepted: Count,
    pub rejected: Count,
    pub rejected_by_reason: BTreeMap<String, Count>,
    pub withdrawn: Count,
    pub completed: Count,
    pub completed_on_time: Count,
    days: [u64; DAYS],
}

impl Default for Applications {
    fn default() -> Self {
        Applications {
            submitted: Count::default(),
            accepted: Count::default(),
            rejected: Count::default(),
            rejected_by_reason: BTreeMap::new(),
            withdrawn: Count::default(),
            completed: Count::default(),
            completed_on_time: Count::default(),
            days: [0; DAYS],
        }
    }
}

/// What the report needs of one application.
#[derive(Debug, Clone)]
pub struct AppFacts {
    pub item: String,
    pub from: String,
    pub to: String,
    pub citizen: String,
    pub received: Date,
    pub accepted: bool,
    pub rejected: Option<String>,
    pub withdrawn: bool,
    /// Completed: the working days it took, and whether by its due date.
    pub completed: Option<(u32, bool)>,
}

impl Applications {
    fn add(&mut self, a: &AppFacts) {
        let c = a.citizen.as_str();
        self.submitted.add(c);
        if a.accepted {
            self.accepted.add(c);
        }
        if let Some(reason) = &a.rejected {
            self.rejected.add(c);
            self.rejected_by_reason
                .entry(reason.clone())
                .or_default()
                .add(c);
        }
        if a.withdrawn {
            self.withdrawn.add(c);
        }
        if let Some((days, on_time)) = a.completed {
            self.completed.add(c);
            if on_time {
                self.completed_on_time.add(c);
            }
            let i = usize::try_from(days).unwrap_or(DAYS - 1).min(DAYS - 1);
            self.days[i] += 1;
        }
    }

    /// The share completed on time, of those completed (unless either is suppressed).
    pub fn on_time_rate(&self) -> Option<f64> {
        let done = self.completed.shown()?;
        let on_time = self.completed_on_time.shown()?;
        (done > 0).then(|| on_time as f64 / done as f64)
    }

    /// The `q` quantile (0..=1) of working days to completion (unless suppressed).
    pub fn working_days(&self, q: f64) -> Option<u32> {
        let n = self.completed.shown()?;
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n);
        let mut seen = 0;
        for (d, c) in self.days.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return u32::try_from(d).ok();
            }
        }
        None
    }
}

/// Refusals at the gateway in one period, for one item (or service) and direction.
#[derive(Debug, Clone, Default)]
pub struct Refusals {
    pub total: Count,
    /// By kind: consent, policy, unknown_item, unavailable, other.
    pub by_kind: BTreeMap<&'static str, Count>,
    /// By the node's exact reason (`refusal_reason`).
    pub by_reason: BTreeMap<String, Count>,
}

pub use tongban_gateway::error::refusal_kind;

/// Mutual recognition of results in one period, for one recognition item and direction
/// (the city that produced and holds the results → the city that asked or decided).
#[derive(Debug, Clone, Default)]
pub struct Medical {
    pub queried: Count,
    pub eligible: Count,
    pub not_eligible: Count,
    pub not_eligible_by_reason: BTreeMap<String, Count>,
    pub recognised: Count,
    pub retested: Count,
    pub retested_by_reason: BTreeMap<String, Count>,
}

impl Medical {
    /// Recognised, of those decided (unless either is suppressed).
    pub fn recognition_rate(&self) -> Option<f64> {
        let r = self.recognised.shown()?;
        let t = self.retested.shown()?;
        (r + t > 0).then(|| r as f64 / (r + t) as f64)
    }
}

/// One verdict a registry gave, or one physician's decision.
#[derive(Debug, Clone)]
pub enum MedicalFact {
    Verdict {
        eligible: bool,
        reasons: Vec<String>,
    },
    /// `reason` when re-tested.
    Decision { recognised: bool, reason: String },
}

/// What the report needs of one audit record.
#[derive(Debug, Clone)]
pub struct CallFacts {
    pub day: Date,
    pub item: String,
    pub from: String,
    pub to: String,
    pub citizen: String,
    pub refusal: Option<String>,
    /// A department's `Submit` answered OK, recorded by the node serving the department.
    pub submit_served: bool,
}

/// The indicators of a window.
#[derive(Debug, Clone)]
pub struct Report {
    pub from: Date,
    pub to: Date,
    pub period: Period,
    pub applications: BTreeMap<Key, Applications>,
    pub refusals: BTreeMap<Key, Refusals>,
    /// Departments' `Submit` calls the nodes served (the audit's side of `submitted`).
    pub submits_served: BTreeMap<Key, Count>,
    pub medical: BTreeMap<Key, Medical>,
    /// Each peer link's time up, per period: key (period, "-", node's city, peer's city).
    pub links: BTreeMap<Key, u64>,
    /// Each node's time running (between its start and stop records), per period: key
    /// (period, "-", node's city, node's city).
    pub running: BTreeMap<Key, u64>,
    /// While reading a log: when each (node, peer) link came up, when each node started,
    /// and each node's last record.
    link_since: BTreeMap<(String, String), i64>,
    node_since: BTreeMap<String, i64>,
    last_seen: BTreeMap<String, i64>,
    /// Audit records read, and applications read.
    pub records_read: u64,
    pub applications_read: u64,
    pub medical_read: u64,
    /// When the open intervals were ended ([`Report::finish`]).
    pub now_ms: i64,
}

impl Report {
    pub fn new(from: Date, to: Date, period: Period) -> Report {
        Report {
            from,
            to,
            period,
            applications: BTreeMap::new(),
            refusals: BTreeMap::new(),
            submits_served: BTreeMap::new(),
            medical: BTreeMap::new(),
            links: BTreeMap::new(),
            running: BTreeMap::new(),
            link_since: BTreeMap::new(),
            node_since: BTreeMap::new(),
            last_seen: BTreeMap::new(),
            records_read: 0,
            applications_read: 0,
            medical_read: 0,
            now_ms: 0,
        }
    }

    fn within(&self, d: Date) -> bool {
        d >= self.from && d <= self.to
    }

    fn key(&self, d: Date, item: &str, from: &str, to: &str) -> Key {
        Key {
            period: self.period.start(d),
            item: item.to_string(),
            from: from.to_string(),
            to: to.to_string(),
        }
    }

    pub fn add_application(&mut self, a: &AppFacts) {
        self.applications_read += 1;
        if !self.within(a.received) {
            return;
        }
        let k = self.key(a.received, &a.item, &a.from, &a.to);
        self.applications.entry(k).or_default().add(a);
    }

    pub fn add_call(&mut self, c: &CallFacts) {
        self.records_read += 1;
        if !self.within(c.day) {
            return;
        }
        let k = self.key(c.day, &c.item, &c.from, &c.to);
        if let Some(reason) = &c.refusal {
            let r = self.refusals.entry(k.clone()).or_default();
            r.total.add(&c.citizen);
            r.by_kind
                .entry(refusal_kind(reason))
                .or_default()
                .add(&c.citizen);
            r.by_reason
                .entry(reason.clone())
                .or_default()
                .add(&c.citizen);
        }
        if c.submit_served {
            self.submits_served.entry(k).or_default().add(&c.citizen);
        }
    }

    /// One medical verdict or decision on `day` about item `item` of a result produced in
    /// `from`, asked or decided in `to`; `citizen` is the patient's pseudonym (for a
    /// decision, which names no patient: its report's id).
    pub fn add_medical(
        &mut self,
        day: Date,
        (item, from, to): (&str, &str, &str),
        citizen: &str,
        fact: &MedicalFact,
    ) {
        self.medical_read += 1;
        if !self.within(day) {
            return;
        }
        let k = self.key(day, item, from, to);
        let m = self.medical.entry(k).or_default();
        match fact {
            MedicalFact::Verdict { eligible, reasons } => {
                m.queried.add(citizen);
                if *eligible {
                    m.eligible.add(citizen);
                } else {
                    m.not_eligible.add(citizen);
                    for r in reasons {
                        m.not_eligible_by_reason
                            .entry(r.clone())
                            .or_default()
                            .add(citizen);
                    }
                }
            }
            MedicalFact::Decision { recognised, reason } => {
                if *recognised {
                    m.recognised.add(citizen);
                } else {
                    m.retested.add(citizen);
                    m.retested_by_reason
                        .entry(reason.clone())
                        .or_default()
                        .add(citizen);
                }
            }
        }
    }

    /// Unix ms of the start of day `d` in China Standard Time.
    fn day_ms(d: Date) -> i64 {
        let t = d.midnight().assume_offset(tongban_catalog::CST);
        t.unix_timestamp() * 1000
    }

    /// The period after the one starting on `d`.
    fn next_period(&self, d: Date) -> Option<Date> {
        match self.period {
            Period::Day => d.next_day(),
            Period::Week => Some(d + Duration::days(7)),
            Period::Month => {
                let (y, m) = if d.month() == Month::December {
                    (d.year() + 1, Month::January)
                } else {
                    (d.year(), d.month().next())
                };
                Date::from_calendar_date(y, m, 1).ok()
            }
        }
    }

    /// Adds `[a, b)` (Unix ms), cut by period and clipped to the window, to `map`.
    fn add_interval(
        &self,
        map: &mut BTreeMap<Key, u64>,
        (node, peer): (&str, &str),
        a: i64,
        b: i64,
    ) {
        let start = Self::day_ms(self.from).max(a);
        let end = self.to.next_day().map_or(b, Self::day_ms).min(b);
        if end <= start {
            return;
        }
        let mut p = self.period.start(tongban_catalog::cst_date(start));
        while let Some(next) = self.next_period(p) {
            let (ps, pe) = (Self::day_ms(p).max(start), Self::day_ms(next).min(end));
            if pe > ps {
                *map.entry(Key {
                    period: p,
                    item: "-".into(),
                    from: node.into(),
                    to: peer.into(),
                })
                .or_default() += u64::try_from(pe - ps).unwrap_or(0);
            }
            if Self::day_ms(next) >= end {
                break;
            }
            p = next;
        }
    }

    /// A node's record at `at_ms` (any record: it was running then).
    pub fn seen(&mut self, node: &str, at_ms: i64) {
        let e = self.last_seen.entry(node.to_string()).or_insert(at_ms);
        *e = (*e).max(at_ms);
    }

    /// The node started (`up` true) or stopped at `at_ms`: every link of it is down. A
    /// start with no stop before it (the process died) ends the previous run at its last
    /// record.
    pub fn node_event(&mut self, node: &str, at_ms: i64, started: bool) {
        let end = if started {
            self.last_seen
                .get(node)
                .copied()
                .unwrap_or(at_ms)
                .min(at_ms)
        } else {
            at_ms
        };
        self.close_node(node, end);
        if started {
            self.node_since.insert(node.to_string(), at_ms);
        }
        self.seen(node, at_ms);
    }

    fn close_node(&mut self, node: &str, end: i64) {
        if let Some(since) = self.node_since.remove(node) {
            let mut running = std::mem::take(&mut self.running);
            self.add_interval(&mut running, (node, node), since, end);
            self.running = running;
        }
        let open: Vec<(String, String)> = self
            .link_since
            .keys()
            .filter(|(n, _)| n == node)
            .cloned()
            .collect();
        for k in open {
            if let Some(since) = self.link_since.remove(&k) {
                let mut links = std::mem::take(&mut self.links);
                self.add_interval(&mut links, (&k.0, &k.1), since, end);
                self.links = links;
            }
        }
    }

    /// The link from `node` to `peer` came up or went down at `at_ms`.
    pub fn link_event(&mut self, node: &str, peer: &str, at_ms: i64, up: bool) {
        self.seen(node, at_ms);
        let k = (node.to_string(), peer.to_string());
        if up {
            self.link_since.entry(k).or_insert(at_ms);
        } else if let Some(since) = self.link_since.remove(&k) {
            let mut links = std::mem::take(&mut self.links);
            self.add_interval(&mut links, (node, peer), since, at_ms);
            self.links = links;
        }
    }

    /// Ends what is still open at `now_ms` (nodes still running, links still up): call
    /// once every log is read.
    pub fn finish(&mut self, now_ms: i64) {
        self.now_ms = now_ms;
        let nodes: Vec<String> = self.node_since.keys().cloned().collect();
        for n in nodes {
            self.close_node(&n, now_ms);
        }
        let links: Vec<(String, String)> = self.link_since.keys().cloned().collect();
        for (n, p) in links {
            self.link_event(&n, &p, now_ms, false);
        }
    }

    /// The length of the period starting on `p`, in ms, clipped to the window and to `now`.
    pub fn period_ms(&self, p: Date, now_ms: i64) -> u64 {
        let start = Self::day_ms(self.from).max(Self::day_ms(p));
        let end = self
            .next_period(p)
            .map_or(now_ms, Self::day_ms)
            .min(self.to.next_day().map_or(now_ms, Self::day_ms))
            .min(now_ms);
        u64::try_from(end - start).unwrap_or(0)
    }

    /// Each link's share of its period up (period clipped to the window and to the time
    /// of the report): ((period, node, peer), up ms, running ms, period ms).
    pub fn link_rows(&self) -> Vec<(&Key, u64, u64, u64)> {
        self.links
            .iter()
            .map(|(k, up)| {
                let running = self
                    .running
                    .get(&Key {
                        period: k.period,
                        item: "-".into(),
                        from: k.from.clone(),
                        to: k.from.clone(),
                    })
                    .copied()
                    .unwrap_or(0);
                (k, *up, running, self.period_ms(k.period, self.now_ms))
            })
            .collect()
    }

    /// The periods of the window, in order.
    pub fn periods(&self) -> Vec<Date> {
        let mut out = Vec::new();
        let mut d = self.period.start(self.from);
        while d <= self.to {
            out.push(d);
            d = match self.period {
                Period::Day => d + Duration::days(1),
                Period::Week => d + Duration::days(7),
                Period::Month => {
                    let (y, m) = if d.month() == Month::December {
                        (d.year() + 1, Month::January)
                    } else {
                        (d.year(), d.month().next())
                    };
                    match Date::from_calendar_date(y, m, 1) {
                        Ok(n) => n,
                        Err(_) => break,
                    }
                }
            };
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use time::macros::date;

    fn app(citizen: &str, days: u32, on_time: bool) -> AppFacts {
        AppFacts {
            item: "JQ-03".into(),
            from: "jinan".into(),
            to: "qingdao".into(),
            citizen: citizen.into(),
            received: date!(2026 - 12 - 02),
            accepted: true,
            rejected: None,
            withdrawn: false,
            completed: Some((days, on_time)),
        }
    }

    #[test]
    fn cells_of_fewer_than_five_citizens_are_suppressed_and_left_out_of_rates() {
        let mut r = Report::new(date!(2026 - 12 - 01), date!(2026 - 12 - 31), Period::Week);
        // Four citizens, ten applications: suppressed however many applications.
        for i in 0..10 {
            r.add_application(&app(&format!("c{}", i % 4), 1, true));
        }
        let a = r.applications.values().next().unwrap();
        assert_eq!(a.submitted.n, 10);
        assert!(a.submitted.suppressed());
        assert_eq!(serde_json::to_value(&a.submitted).unwrap(), "<5");
        assert_eq!(a.on_time_rate(), None);
        assert_eq!(a.working_days(0.5), None);
        // A fifth citizen: shown.
        r.add_application(&app("c4", 3, false));
        let a = r.applications.values().next().unwrap();
        assert_eq!(serde_json::to_value(&a.submitted).unwrap(), 11);
        assert_eq!(a.working_days(0.5), Some(1));
        assert_eq!(a.working_days(0.9), Some(1));
        assert_eq!(a.working_days(1.0), Some(3));
        // On time: 10 of 11, by four citizens only: suppressed, so no rate either.
        assert!(a.completed_on_time.suppressed());
        assert_eq!(a.on_time_rate(), None);
        // A fifth on time: 11 of 12.
        r.add_application(&app("c5", 0, true));
        let a = r.applications.values().next().unwrap();
        assert_eq!(a.on_time_rate(), Some(11.0 / 12.0));
        // Weeks start on Monday.
        assert_eq!(
            r.applications.keys().next().unwrap().period,
            date!(2026 - 11 - 30)
        );
    }

    #[test]
    fn periods_cover_the_window() {
        let r = Report::new(date!(2026 - 11 - 15), date!(2027 - 01 - 02), Period::Month);
        assert_eq!(
            r.periods(),
            [
                date!(2026 - 11 - 01),
                date!(2026 - 12 - 01),
                date!(2027 - 01 - 01)
            ]
        );
        assert_eq!(refusal_kind("CONSENT_REQUIRED"), "consent");
        assert_eq!(refusal_kind("DENIED_BY_POLICY"), "policy");
        assert_eq!(refusal_kind("CATALOG_ITEM_UNKNOWN"), "unknown_item");
        assert_eq!(refusal_kind("UNAVAILABLE"), "unavailable");
    }
}
