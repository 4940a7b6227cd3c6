//! Writes a synthetic audit log of N records into `<dir>/audit` through the node's own log
//! writer (hash chain, frames, segments as a node writes them), for the report's scale
//! bench: cross-city `Submit` exchanges of the 27 items both ways over `--days` days, a few
//! per cent refused with the node's reasons, 200,000 distinct citizen pseudonyms.
//!
//! usage: tongban-make-audit-log --dir DIR --records N [--days 30] [--end-ms MS]

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use clap::Parser;
use tongban_gateway::audit::log::{AuditLog, Durability, LogOptions};
use tongban_proto::audit::v1::{AuditRecord, Side};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    dir: std::path::PathBuf,
    #[arg(long)]
    records: u64,
    #[arg(long, default_value_t = 30)]
    days: i64,
    /// The last record's time (Unix ms); now by default.
    #[arg(long)]
    end_ms: Option<i64>,
}

const REASONS: [&str; 4] = [
    "CONSENT_REQUIRED",
    "DENIED_BY_POLICY",
    "CATALOG_ITEM_UNKNOWN",
    "UNAVAILABLE",
];

fn record(i: u64, start_ms: i64, span_ms: i64, n: u64) -> AuditRecord {
    // A cheap, repeatable mix (no RNG state shared between tasks).
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let item = 1 + (h >> 7) % 27;
    let jinan_first = (h >> 13).is_multiple_of(2);
    let (caller, target) = if jinan_first {
        ("jinan", "qingdao")
    } else {
        ("qingdao", "jinan")
    };
    let refused = (h >> 17).is_multiple_of(50);
    let at =
        start_ms + i64::try_from(i * u64::try_from(span_ms).unwrap_or(0) / n.max(1)).unwrap_or(0);
    AuditRecord {
        request_id: format!("00000000-0000-4000-8000-{i:012x}"),
        side: if refused { Side::Home } else { Side::Provider } as i32,
        node_city: target.into(),
        started_at_ms: at,
        ended_at_ms: at + 2,
        duration_us: 1800,
        caller_city: caller.into(),
        caller_org: "zwfw".into(),
        target_city: target.into(),
        target_org: "hrss".into(),
        service: "tongban.crosscity.v2.CrossCityService".into(),
        method: "Submit".into(),
        catalog_code: format!("JQ-{item:02}"),
        purpose: "case-handling".into(),
        subject_pseudonym: format!("{:032x}", (h >> 3) % 200_000),
        request_bytes: 222,
        response_bytes: 310,
        grpc_status: if refused { 7 } else { 0 },
        refusal_reason: if refused {
            REASONS[usize::try_from((h >> 23) % 4).unwrap_or(0)].into()
        } else {
            String::new()
        },
        caller_kind: "system".into(),
        caller_person: "zwfw-system".into(),
        ..Default::default()
    }
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let dir = a.dir.join("audit");
        let (tx, rx) = std::sync::mpsc::sync_channel(1024);
        // Nobody indexes: drain what the writer reports.
        std::thread::spawn(move || while rx.recv().is_ok() {});
        let log = Arc::new(
            AuditLog::open(
                &dir,
                LogOptions {
                    durability: Durability::Batch(std::time::Duration::from_secs(1)),
                    ..LogOptions::default()
                },
                tx,
            )
            .with_context(|| format!("opening {}", dir.display()))?,
        );
        let end = a.end_ms.unwrap_or_else(|| {
            i64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis())
                    .unwrap_or(0),
            )
            .unwrap_or(0)
        });
        let span = a.days * 86_400_000;
        let start = end - span;
        let t = Instant::now();
        let workers = 512u64;
        let mut tasks = Vec::new();
        // Appends in order of i within each worker; the log's order is the order of arrival.
        for w in 0..workers {
            let log = Arc::clone(&log);
            let n = a.records;
            tasks.push(tokio::spawn(async move {
                let mut i = w;
                while i < n {
                    log.append(record(i, start, span, n)).await?;
                    i += workers;
                }
                anyhow::Ok(())
            }));
        }
        for t in tasks {
            t.await??;
        }
        println!(
            "{} records in {:.1} s ({:.0} records/s) into {}",
            a.records,
            t.elapsed().as_secs_f64(),
            a.records as f64 / t.elapsed().as_secs_f64(),
            dir.display()
        );
        anyhow::Ok(())
    })
}
