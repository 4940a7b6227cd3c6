//! Monitoring and evaluation for regulators (监测评估): how well the integration works, per
//! period (day, week, month), catalog item and direction (the applicant's city → the
//! handling city), computed from what the federation already records — the nodes' audit
//! logs and the departments' application states — never from a second copy that can drift.
//!
//! - [`indicators`]: the counts, with the privacy rule (a cell counting 1 to 4 distinct
//!   citizens is shown as `<5`);
//! - [`sources`]: reading the audit logs (offline, segment by segment) and the departments'
//!   stores (one application at a time): bounded memory whatever their size;
//! - [`render`]: table, CSV, JSON (`tongban-report/1`, schema in `docs/report.schema.json`)
//!   and one self-contained HTML page with SVG charts.

pub mod indicators;
pub mod render;
pub mod sources;

pub use indicators::{Period, Report};

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("{path}: {message}")]
    Source { path: String, message: String },
    #[error("{0}")]
    Invalid(String),
}
