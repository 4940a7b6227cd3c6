//! `tongban report`: the regulators' indicators (监测评估) for a window, from the nodes' audit
//! logs and the departments' application states, read in place (offline: the node and the
//! departments stopped, or copies of their data directories).

use std::path::PathBuf;
use std::process::ExitCode;

use tongban_report::{render, sources, Period, Report};

#[derive(clap::Args)]
pub struct ReportArgs {
    /// First day of the window (YYYY-MM-DD, China Standard Time); default: the --to day.
    #[arg(long)]
    from: Option<String>,
    /// Last day of the window, included (YYYY-MM-DD); default: today.
    #[arg(long)]
    to: Option<String>,
    /// day, week (from Monday) or month.
    #[arg(long, default_value = "day")]
    period: String,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// A node's data directory (its audit log is `DIR/audit`); repeat for each node.
    #[arg(long)]
    audit: Vec<PathBuf>,
    /// A department's data directory, or a directory holding several; repeat as needed.
    #[arg(long)]
    departments: Vec<PathBuf>,
    /// A medical result registry's data directory (its verdicts and decisions); repeat.
    #[arg(long)]
    medical: Vec<PathBuf>,
    /// The catalog whose working-day calendar counts the days; the embedded one if absent.
    #[arg(long)]
    catalog: Option<PathBuf>,
    /// Write the report here instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
    Html,
}

fn date(s: &str, key: &str) -> Result<time::Date, String> {
    let f = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &f).map_err(|e| format!("--{key} `{s}` is not YYYY-MM-DD: {e}"))
}

pub fn run(a: ReportArgs) -> ExitCode {
    let today = tongban_catalog::cst_date(time::OffsetDateTime::now_utc().unix_timestamp() * 1000);
    let parsed = (|| {
        let to =
            a.to.as_deref()
                .map(|s| date(s, "to"))
                .transpose()?
                .unwrap_or(today);
        let from = a
            .from
            .as_deref()
            .map(|s| date(s, "from"))
            .transpose()?
            .unwrap_or(to);
        if from > to {
            return Err(format!("--from {from} is after --to {to}"));
        }
        let period = Period::parse(&a.period)
            .ok_or_else(|| format!("--period `{}`: day, week or month", a.period))?;
        if a.audit.is_empty() && a.departments.is_empty() && a.medical.is_empty() {
            return Err(
                "nothing to read: give --audit (a node's data directory), --departments or --medical"
                    .into(),
            );
        }
        let catalog = tongban_catalog::Catalog::load_or_embedded(a.catalog.as_deref())
            .map_err(|e| e.to_string())?;
        Ok((from, to, period, catalog))
    })();
    let (from, to, period, catalog) = match parsed {
        Ok(p) => p,
        Err(e) => {
            eprintln!("tongban: {e}");
            return ExitCode::from(crate::EX_CONFIG);
        }
    };
    crate::block_on(async move {
        let mut report = Report::new(from, to, period);
        for dir in &a.audit {
            sources::read_audit(&mut report, dir)?;
        }
        for root in &a.departments {
            let dirs = sources::department_dirs(root);
            if dirs.is_empty() {
                anyhow::bail!(
                    "{}: no department store here (no applications/ below it)",
                    root.display()
                );
            }
            for d in dirs {
                sources::read_department(&mut report, &d, &catalog.calendar).await?;
            }
        }
        for dir in &a.medical {
            if !sources::is_medical(dir) {
                anyhow::bail!(
                    "{}: no medical result registry here (no results/ in it)",
                    dir.display()
                );
            }
        }
        if !a.medical.is_empty() {
            sources::read_medical(&mut report, &a.medical).await?;
        }
        // What is still open (a node running, a link up) ends now.
        report.finish(time::OffsetDateTime::now_utc().unix_timestamp() * 1000);
        let text = match a.format {
            Format::Table => render::table(&report),
            Format::Csv => render::csv(&report),
            Format::Json => format!("{:#}\n", render::json(&report)),
            Format::Html => render::html(&report),
        };
        match &a.out {
            Some(p) => std::fs::write(p, text)?,
            None => print!("{text}"),
        }
        Ok(ExitCode::SUCCESS)
    })
}
