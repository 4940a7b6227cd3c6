//! The report's forms: a table for a terminal, CSV (one indicator per line), JSON
//! (`tongban-report/1`, described by `docs/report.schema.json`) and one self-contained HTML
//! page with SVG charts the report draws itself (nothing fetched: it works offline).
//! Suppressed cells are `<5` in every form, and left out of rates and charts.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{json, Value};
use time::Date;

use crate::indicators::{Applications, Count, Key, Medical, Refusals, Report, MIN_CITIZENS};

/// The JSON format's name.
pub const FORMAT: &str = "tongban-report/1";

/// `part / whole`, at most 1 (0 when `whole` is 0).
fn share(part: u64, whole: u64) -> f64 {
    if whole > 0 {
        (part as f64 / whole as f64).min(1.0)
    } else {
        0.0
    }
}

fn cell(c: &Count) -> String {
    c.shown()
        .map_or_else(|| "<5".to_string(), |n| n.to_string())
}

fn key_json(r: &Report, k: &Key) -> serde_json::Map<String, Value> {
    let mut m = serde_json::Map::new();
    m.insert("period".into(), json!(r.period.label(k.period)));
    m.insert("item".into(), json!(k.item));
    m.insert("from".into(), json!(k.from));
    m.insert("to".into(), json!(k.to));
    m
}

fn applications_json(r: &Report, k: &Key, a: &Applications) -> Value {
    let mut m = key_json(r, k);
    m.insert("submitted".into(), json!(a.submitted));
    m.insert("accepted".into(), json!(a.accepted));
    m.insert("rejected".into(), json!(a.rejected));
    m.insert("rejected_by_reason".into(), json!(a.rejected_by_reason));
    m.insert("withdrawn".into(), json!(a.withdrawn));
    m.insert("completed".into(), json!(a.completed));
    m.insert("completed_on_time".into(), json!(a.completed_on_time));
    m.insert("on_time_rate".into(), json!(a.on_time_rate()));
    m.insert("median_working_days".into(), json!(a.working_days(0.5)));
    m.insert("p90_working_days".into(), json!(a.working_days(0.9)));
    let served = r.submits_served.get(k);
    m.insert("submits_audited".into(), json!(served));
    Value::Object(m)
}

fn refusals_json(r: &Report, k: &Key, f: &Refusals) -> Value {
    let mut m = key_json(r, k);
    m.insert("total".into(), json!(f.total));
    m.insert("by_kind".into(), json!(f.by_kind));
    m.insert("by_reason".into(), json!(f.by_reason));
    Value::Object(m)
}

fn medical_json(r: &Report, k: &Key, m: &Medical) -> Value {
    let mut o = key_json(r, k);
    o.insert("queried".into(), json!(m.queried));
    o.insert("eligible".into(), json!(m.eligible));
    o.insert("not_eligible".into(), json!(m.not_eligible));
    o.insert(
        "not_eligible_by_reason".into(),
        json!(m.not_eligible_by_reason),
    );
    o.insert("recognised".into(), json!(m.recognised));
    o.insert("retested".into(), json!(m.retested));
    o.insert("retested_by_reason".into(), json!(m.retested_by_reason));
    o.insert("recognition_rate".into(), json!(m.recognition_rate()));
    Value::Object(o)
}

/// The rows of the applications' tables: the departments' rows, and rows of submissions the
/// nodes audited with no department's application beside them (a department not read, or a
/// gap to look into): they show, so that the difference is visible.
fn keys(r: &Report) -> Vec<&Key> {
    let mut keys: Vec<&Key> = r.applications.keys().collect();
    for k in r.submits_served.keys() {
        if !r.applications.contains_key(k) {
            keys.push(k);
        }
    }
    keys.sort();
    keys
}

/// The report as JSON.
pub fn json(r: &Report) -> Value {
    let keys = keys(r);
    let empty = Applications::default();
    json!({
        "format": FORMAT,
        "from": r.from.to_string(),
        "to": r.to.to_string(),
        "period": r.period,
        "suppression": {
            "min_citizens": MIN_CITIZENS,
            "rule": "a cell counting 1 to 4 distinct citizens is shown as \"<5\" and left out of rates"
        },
        "sources": { "audit_records": r.records_read, "applications": r.applications_read, "medical_records": r.medical_read },
        "applications": keys.iter().map(|k| applications_json(r, k, r.applications.get(*k).unwrap_or(&empty))).collect::<Vec<_>>(),
        "refusals": r.refusals.iter().map(|(k, f)| refusals_json(r, k, f)).collect::<Vec<_>>(),
        "medical": r.medical.iter().map(|(k, m)| medical_json(r, k, m)).collect::<Vec<_>>(),
        "links": r.link_rows().into_iter().map(|(k, up, running, period)| json!({
            "period": r.period.label(k.period),
            "node": k.from,
            "peer": k.to,
            "up_seconds": up / 1000,
            "running_seconds": running / 1000,
            "period_seconds": period / 1000,
            "up_share": share(up, period),
            "up_share_running": share(up, running),
        })).collect::<Vec<_>>(),
    })
}

/// One line per indicator: period,item,from,to,indicator,value.
pub fn csv(r: &Report) -> String {
    let mut out = String::from("period,item,from,to,indicator,value\n");
    let mut line = |k: &Key, what: &str, v: String| {
        let esc = |s: &str| {
            if s.contains([',', '"', '\n']) {
                format!("\"{}\"", s.replace('"', "\"\""))
            } else {
                s.to_string()
            }
        };
        let _ = writeln!(
            out,
            "{},{},{},{},{},{}",
            r.period.label(k.period),
            esc(&k.item),
            esc(&k.from),
            esc(&k.to),
            esc(what),
            esc(&v)
        );
    };
    let opt = |v: Option<String>| v.unwrap_or_default();
    for (k, a) in &r.applications {
        line(k, "submitted", cell(&a.submitted));
        line(k, "accepted", cell(&a.accepted));
        line(k, "rejected", cell(&a.rejected));
        for (reason, c) in &a.rejected_by_reason {
            line(k, &format!("rejected: {reason}"), cell(c));
        }
        line(k, "withdrawn", cell(&a.withdrawn));
        line(k, "completed", cell(&a.completed));
        line(k, "completed_on_time", cell(&a.completed_on_time));
        line(
            k,
            "on_time_rate",
            opt(a.on_time_rate().map(|x| format!("{x:.3}"))),
        );
        line(
            k,
            "median_working_days",
            opt(a.working_days(0.5).map(|d| d.to_string())),
        );
        line(
            k,
            "p90_working_days",
            opt(a.working_days(0.9).map(|d| d.to_string())),
        );
        if let Some(c) = r.submits_served.get(k) {
            line(k, "submits_audited", cell(c));
        }
    }
    for (k, f) in &r.refusals {
        line(k, "refused", cell(&f.total));
        for (kind, c) in &f.by_kind {
            line(k, &format!("refused: {kind}"), cell(c));
        }
    }
    for (k, up, running, period) in r.link_rows() {
        line(k, "link_up_share", format!("{:.4}", share(up, period)));
        line(
            k,
            "link_up_share_running",
            format!("{:.4}", share(up, running)),
        );
        line(k, "link_up_seconds", (up / 1000).to_string());
        line(k, "node_running_seconds", (running / 1000).to_string());
    }
    for (k, m) in &r.medical {
        line(k, "results_queried", cell(&m.queried));
        line(k, "eligible", cell(&m.eligible));
        line(k, "not_eligible", cell(&m.not_eligible));
        for (reason, c) in &m.not_eligible_by_reason {
            line(k, &format!("not_eligible: {reason}"), cell(c));
        }
        line(k, "recognised", cell(&m.recognised));
        line(k, "retested", cell(&m.retested));
        for (reason, c) in &m.retested_by_reason {
            line(k, &format!("retested: {reason}"), cell(c));
        }
        line(
            k,
            "recognition_rate",
            opt(m.recognition_rate().map(|x| format!("{x:.3}"))),
        );
    }
    out
}

/// A table for a terminal.
pub fn table(r: &Report) -> String {
    let mut out = format!(
        "tongban report {} .. {} by {}: {} audit records and {} applications read; cells of fewer than {MIN_CITIZENS} citizens shown as <5\n\n",
        r.from,
        r.to,
        period_name(r),
        r.records_read,
        r.applications_read
    );
    let _ = writeln!(
        out,
        "{:<10}  {:<6}  {:<18}  {:>9}  {:>8}  {:>8}  {:>9}  {:>9}  {:>7}  {:>6}  {:>5}  {:>7}",
        "period",
        "item",
        "direction",
        "submitted",
        "accepted",
        "rejected",
        "withdrawn",
        "completed",
        "on time",
        "median",
        "p90",
        "audited"
    );
    let empty = Applications::default();
    for k in keys(r) {
        let a = r.applications.get(k).unwrap_or(&empty);
        let rate = a
            .on_time_rate()
            .map_or_else(|| "-".to_string(), |x| format!("{:.0}%", x * 100.0));
        let days = |q| {
            a.working_days(q)
                .map_or_else(|| "-".to_string(), |d| d.to_string())
        };
        let _ =
            writeln!(
            out,
            "{:<10}  {:<6}  {:<18}  {:>9}  {:>8}  {:>8}  {:>9}  {:>9}  {:>7}  {:>6}  {:>5}  {:>7}",
            r.period.label(k.period),
            k.item,
            format!("{} → {}", k.from, k.to),
            cell(&a.submitted),
            cell(&a.accepted),
            cell(&a.rejected),
            cell(&a.withdrawn),
            cell(&a.completed),
            rate,
            days(0.5),
            days(0.9),
            r.submits_served.get(k).map_or_else(|| "0".to_string(), cell),
        );
    }
    if !r.refusals.is_empty() {
        let _ = writeln!(out, "\nrefused at the gateway:");
        let _ = writeln!(
            out,
            "{:<10}  {:<6}  {:<18}  {:>7}  {:>7}  {:>6}  {:>12}  {:>11}  {:>5}",
            "period",
            "item",
            "direction",
            "refused",
            "consent",
            "policy",
            "unknown item",
            "unavailable",
            "other"
        );
        for (k, f) in &r.refusals {
            let kind = |n: &str| f.by_kind.get(n).map_or_else(|| "0".to_string(), cell);
            let _ = writeln!(
                out,
                "{:<10}  {:<6}  {:<18}  {:>7}  {:>7}  {:>6}  {:>12}  {:>11}  {:>5}",
                r.period.label(k.period),
                k.item,
                format!("{} → {}", k.from, k.to),
                cell(&f.total),
                kind("consent"),
                kind("policy"),
                kind("unknown_item"),
                kind("unavailable"),
                kind("other"),
            );
        }
    }
    let links = r.link_rows();
    if !links.is_empty() {
        let _ = writeln!(
            out,
            "\npeer links (share of the period up, and of the time the node ran):"
        );
        for (k, up, running, period) in links {
            let _ = writeln!(
                out,
                "{:<10}  {} → {}  {:>6.2}%  {:>6.2}% of running  up {:.1} s, node running {:.1} s, period {} s",
                r.period.label(k.period),
                k.from,
                k.to,
                share(up, period) * 100.0,
                share(up, running) * 100.0,
                up as f64 / 1000.0,
                running as f64 / 1000.0,
                period / 1000
            );
        }
    }
    if !r.medical.is_empty() {
        let _ = writeln!(
            out,
            "\nmutual recognition of results (origin → asking city):"
        );
        let _ = writeln!(
            out,
            "{:<10}  {:<6}  {:<18}  {:>7}  {:>8}  {:>12}  {:>10}  {:>8}  {:>11}",
            "period",
            "item",
            "direction",
            "queried",
            "eligible",
            "not eligible",
            "recognised",
            "retested",
            "recognition"
        );
        for (k, m) in &r.medical {
            let _ = writeln!(
                out,
                "{:<10}  {:<6}  {:<18}  {:>7}  {:>8}  {:>12}  {:>10}  {:>8}  {:>11}",
                r.period.label(k.period),
                k.item,
                format!("{} → {}", k.from, k.to),
                cell(&m.queried),
                cell(&m.eligible),
                cell(&m.not_eligible),
                cell(&m.recognised),
                cell(&m.retested),
                m.recognition_rate()
                    .map_or_else(|| "-".to_string(), |x| format!("{:.0}%", x * 100.0)),
            );
        }
    }
    out
}

fn period_name(r: &Report) -> &'static str {
    match r.period {
        crate::Period::Day => "day",
        crate::Period::Week => "week",
        crate::Period::Month => "month",
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A horizontal bar chart: (label, value shown or `<5`) rows, scaled to the largest.
fn bars(title: &str, id: &str, rows: &[(String, Option<f64>, String)]) -> String {
    let max = rows
        .iter()
        .filter_map(|(_, v, _)| *v)
        .fold(0.0_f64, f64::max)
        .max(1e-9);
    let h = 22 * rows.len().max(1) + 10;
    let mut svg = format!(
        "<figure id=\"{id}\"><figcaption>{}</figcaption><svg role=\"img\" aria-label=\"{}\" width=\"760\" height=\"{h}\" viewBox=\"0 0 760 {h}\" xmlns=\"http://www.w3.org/2000/svg\">",
        esc(title),
        esc(title)
    );
    for (i, (label, v, text)) in rows.iter().enumerate() {
        let y = 5 + i * 22;
        let w = v.map_or(0.0, |v| v / max * 380.0);
        let _ = write!(
            svg,
            "<text x=\"0\" y=\"{}\" font-size=\"12\">{}</text><rect x=\"200\" y=\"{y}\" width=\"{w:.1}\" height=\"16\" fill=\"#1f5f99\"/><text x=\"{:.1}\" y=\"{}\" font-size=\"12\">{}</text>",
            y + 13,
            esc(label),
            205.0 + w,
            y + 13,
            esc(text)
        );
    }
    if rows.is_empty() {
        svg.push_str("<text x=\"0\" y=\"20\" font-size=\"12\">no data in the window</text>");
    }
    svg.push_str("</svg></figure>");
    svg
}

/// One self-contained page: the charts and the tables, nothing fetched.
pub fn html(r: &Report) -> String {
    // One bar per period and direction: the items' shown cells summed, a suppressed cell left
    // out and flagged (summing would otherwise reveal it).
    let mut volumes: BTreeMap<(Date, &str, &str), (u64, bool)> = BTreeMap::new();
    for (k, a) in &r.applications {
        let e = volumes
            .entry((k.period, k.from.as_str(), k.to.as_str()))
            .or_default();
        match a.submitted.shown() {
            Some(n) => e.0 += n,
            None => e.1 = true,
        }
    }
    let volume_rows: Vec<(String, Option<f64>, String)> = volumes
        .iter()
        .map(|((period, from, to), (n, hidden))| {
            (
                format!("{} {from} → {to}", r.period.label(*period)),
                Some(*n as f64),
                format!("{n}{}", if *hidden { " + cells <5" } else { "" }),
            )
        })
        .collect();
    let mut on_time: BTreeMap<String, (u64, u64, bool)> = BTreeMap::new();
    for (k, a) in &r.applications {
        let e = on_time.entry(k.item.clone()).or_default();
        match (a.completed.shown(), a.completed_on_time.shown()) {
            (Some(d), Some(o)) => {
                e.0 += o;
                e.1 += d;
            }
            _ => e.2 = true,
        }
    }
    let on_time_rows: Vec<(String, Option<f64>, String)> = on_time
        .iter()
        .map(|(item, (o, d, hidden))| {
            let rate = (*d > 0).then(|| *o as f64 / *d as f64);
            let text = match (rate, hidden) {
                (Some(x), _) => format!(
                    "{:.0}%{}",
                    x * 100.0,
                    if *hidden { " (some cells <5)" } else { "" }
                ),
                (None, true) => "<5".to_string(),
                (None, false) => "none completed".to_string(),
            };
            (item.clone(), rate, text)
        })
        .collect();
    let mut kinds: BTreeMap<&str, (u64, bool)> = BTreeMap::new();
    for f in r.refusals.values() {
        for (kind, c) in &f.by_kind {
            let e = kinds.entry(kind).or_default();
            match c.shown() {
                Some(n) => e.0 += n,
                None => e.1 = true,
            }
        }
    }
    let refusal_rows: Vec<(String, Option<f64>, String)> = kinds
        .iter()
        .map(|(k, (n, hidden))| {
            (
                k.replace('_', " "),
                Some(*n as f64),
                format!("{n}{}", if *hidden { " + cells <5" } else { "" }),
            )
        })
        .collect();
    let mut page = String::new();
    let _ = write!(
        page,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Tongban report {from} – {to}</title>\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<style>body{{font-family:sans-serif;margin:1.5rem;color:#111}}table{{border-collapse:collapse;font-size:.85rem}}td,th{{border:1px solid #999;padding:.2rem .4rem;text-align:right}}th:first-child,td:first-child{{text-align:left}}figure{{margin:1rem 0}}figcaption{{font-weight:bold;margin-bottom:.3rem}}</style></head><body>\
<h1>Jinan–Qingdao integration: monitoring and evaluation</h1>\
<p>From {from} to {to}, by {period}. Computed from {records} audit records and {apps} applications. A cell counting fewer than {min} distinct citizens is shown as &lt;5 and left out of rates and charts.</p>",
        from = r.from,
        to = r.to,
        period = period_name(r),
        records = r.records_read,
        apps = r.applications_read,
        min = MIN_CITIZENS,
    );
    page.push_str(&bars(
        "Applications submitted, by period and direction",
        "chart-volumes",
        &volume_rows,
    ));
    page.push_str(&bars(
        "Completed within the statutory limit, by item",
        "chart-on-time",
        &on_time_rows,
    ));
    page.push_str(&bars(
        "Calls refused at the gateway, by reason",
        "chart-refusals",
        &refusal_rows,
    ));
    let mut recognition: BTreeMap<String, (u64, u64, bool)> = BTreeMap::new();
    for (k, m) in &r.medical {
        let e = recognition.entry(k.item.clone()).or_default();
        match (m.recognised.shown(), m.retested.shown()) {
            (Some(a), Some(b)) => {
                e.0 += a;
                e.1 += a + b;
            }
            _ => e.2 = true,
        }
    }
    let recognition_rows: Vec<(String, Option<f64>, String)> = recognition
        .iter()
        .filter(|(_, (_, d, hidden))| *d > 0 || *hidden)
        .map(|(item, (a, d, hidden))| {
            let rate = (*d > 0).then(|| *a as f64 / *d as f64);
            let text = match rate {
                Some(x) => format!(
                    "{:.0}%{}",
                    x * 100.0,
                    if *hidden { " (some cells <5)" } else { "" }
                ),
                None => "<5".to_string(),
            };
            (item.clone(), rate, text)
        })
        .collect();
    page.push_str(&bars(
        "Medical results recognised instead of re-tested, by item",
        "chart-recognition",
        &recognition_rows,
    ));
    page.push_str("<h2>Applications</h2><table id=\"applications\"><thead><tr><th scope=\"col\">period</th><th scope=\"col\">item</th><th scope=\"col\">direction</th><th scope=\"col\">submitted</th><th scope=\"col\">accepted</th><th scope=\"col\">rejected</th><th scope=\"col\">withdrawn</th><th scope=\"col\">completed</th><th scope=\"col\">on time</th><th scope=\"col\">median days</th><th scope=\"col\">p90 days</th></tr></thead><tbody>");
    for (k, a) in &r.applications {
        let opt = |v: Option<u32>| v.map_or_else(|| "–".to_string(), |d| d.to_string());
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{} → {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.period.label(k.period)),
            esc(&k.item),
            esc(&k.from),
            esc(&k.to),
            esc(&cell(&a.submitted)),
            esc(&cell(&a.accepted)),
            esc(&cell(&a.rejected)),
            esc(&cell(&a.withdrawn)),
            esc(&cell(&a.completed)),
            a.on_time_rate().map_or_else(|| "–".to_string(), |x| format!("{:.0}%", x * 100.0)),
            opt(a.working_days(0.5)),
            opt(a.working_days(0.9)),
        );
    }
    page.push_str("</tbody></table>");
    page.push_str("<h2>Refused at the gateway</h2><table id=\"refusals\"><thead><tr><th scope=\"col\">period</th><th scope=\"col\">item</th><th scope=\"col\">direction</th><th scope=\"col\">refused</th><th scope=\"col\">by reason</th></tr></thead><tbody>");
    for (k, f) in &r.refusals {
        let reasons: Vec<String> = f
            .by_reason
            .iter()
            .map(|(reason, c)| format!("{reason}: {}", cell(c)))
            .collect();
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{} → {}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.period.label(k.period)),
            esc(&k.item),
            esc(&k.from),
            esc(&k.to),
            esc(&cell(&f.total)),
            esc(&reasons.join("; ")),
        );
    }
    page.push_str("</tbody></table>");
    page.push_str("<h2>Peer links</h2><table id=\"links\"><thead><tr><th scope=\"col\">period</th><th scope=\"col\">link</th><th scope=\"col\">share of the period up</th><th scope=\"col\">share of the node's running time up</th><th scope=\"col\">up (s)</th><th scope=\"col\">node running (s)</th></tr></thead><tbody>");
    for (k, up, running, period) in r.link_rows() {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{} → {}</td><td>{:.2}%</td><td>{:.2}%</td><td>{:.1}</td><td>{:.1}</td></tr>",
            esc(&r.period.label(k.period)),
            esc(&k.from),
            esc(&k.to),
            share(up, period) * 100.0,
            share(up, running) * 100.0,
            up as f64 / 1000.0,
            running as f64 / 1000.0
        );
    }
    page.push_str("</tbody></table>");
    page.push_str("<h2>Mutual recognition of results</h2><table id=\"medical\"><thead><tr><th scope=\"col\">period</th><th scope=\"col\">item</th><th scope=\"col\">origin → asking city</th><th scope=\"col\">queried</th><th scope=\"col\">eligible</th><th scope=\"col\">not eligible</th><th scope=\"col\">recognised</th><th scope=\"col\">re-tested</th></tr></thead><tbody>");
    for (k, m) in &r.medical {
        let _ = write!(
            page,
            "<tr><td>{}</td><td>{}</td><td>{} → {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            esc(&r.period.label(k.period)),
            esc(&k.item),
            esc(&k.from),
            esc(&k.to),
            esc(&cell(&m.queried)),
            esc(&cell(&m.eligible)),
            esc(&cell(&m.not_eligible)),
            esc(&cell(&m.recognised)),
            esc(&cell(&m.retested)),
        );
    }
    page.push_str("</tbody></table></body></html>\n");
    page
}
