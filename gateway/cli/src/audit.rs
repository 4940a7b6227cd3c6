//! `tongban audit`: verify and reindex a stopped node's log offline; query a running node's
//! Audit API.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use crate::client::NodeArgs;
use crate::EX_CONFIG;

#[derive(Subcommand)]
pub enum AuditCmd {
    /// Verify the hash chain (and this node's signed checkpoints) of a data directory.
    Verify {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Rebuild the audit indexes from the log (stop the node first).
    Reindex {
        #[arg(long)]
        data_dir: PathBuf,
    },
    /// Query records through a node's Audit API (needs role audit-operator).
    Query {
        #[command(flatten)]
        at: NodeArgs,
        /// city/org of the caller.
        #[arg(long, default_value = "")]
        caller: String,
        #[arg(long, default_value = "")]
        service: String,
        #[arg(long, default_value_t = 0)]
        from_ms: i64,
        #[arg(long, default_value_t = 0)]
        to_ms: i64,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// Both sides' records of one exchange.
    Show {
        #[command(flatten)]
        at: NodeArgs,
        request_id: String,
    },
    /// A proof from a node's Audit API, written as a file that `verify-proof` and the
    /// format document's verifiers check offline: a record's inclusion (--seq; operators, or
    /// a citizen for a record about themselves) or the consistency of two checkpoints
    /// (--from, --to; operators).
    Prove {
        #[command(flatten)]
        at: NodeArgs,
        /// The record whose inclusion to prove.
        #[arg(long, conflicts_with_all = ["from", "to"])]
        seq: Option<u64>,
        /// The seq of the earlier checkpoint.
        #[arg(long, requires = "to")]
        from: Option<u64>,
        /// The seq of the later checkpoint (0: the newest).
        #[arg(long)]
        to: Option<u64>,
        /// Where the proof goes (JSON).
        #[arg(long)]
        out: PathBuf,
    },
    /// Write an archive of the log (the node stopped): its records from --from to --to
    /// (rounded down to the newest checkpoint at or before it), the checkpoints, the node
    /// certificate and the city's CA, with a manifest; checkable offline on another machine
    /// (`verify-archive`, docs/audit-format.md §7).
    Archive {
        /// The node's config (its data directory, certificate and trust bundle).
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        from: Option<u64>,
        #[arg(long)]
        to: Option<u64>,
        /// The archive's directory (created).
        out: PathBuf,
    },
    /// Check an archive offline: the files, the node certificate against the trust bundle,
    /// the checkpoints, the chain and the tree. Exit 0, or 65 and why not.
    VerifyArchive {
        archive: PathBuf,
        #[arg(long, default_value = "deploy/certs/trust-bundle.toml")]
        trust_bundle: PathBuf,
    },
    /// Remove from the log (the node stopped) the oldest whole segments that --archive
    /// holds and whose records are all past their retention (`[audit.retention]`); the log
    /// then starts after them, anchored on the archive.
    Prune {
        #[arg(long)]
        config: PathBuf,
        #[arg(long)]
        archive: PathBuf,
    },
    /// Check a proof file offline against the federation's trust bundle: the node
    /// certificate, the checkpoints' signatures and the hashes. Exit 0 and what it proves,
    /// or 65 and why not.
    VerifyProof {
        file: PathBuf,
        #[arg(long, default_value = "deploy/certs/trust-bundle.toml")]
        trust_bundle: PathBuf,
    },
}

/// Runs an audit command.
pub fn run(cmd: AuditCmd) -> ExitCode {
    match cmd {
        AuditCmd::Verify { data_dir } => audit_verify(&data_dir),
        AuditCmd::Reindex { data_dir } => reindex(&data_dir),
        AuditCmd::VerifyProof { file, trust_bundle } => verify_proof(&file, &trust_bundle),
        AuditCmd::Archive {
            config,
            from,
            to,
            out,
        } => archive(&config, from, to, &out),
        AuditCmd::VerifyArchive {
            archive,
            trust_bundle,
        } => {
            let checked = tongban_gateway::trust::TrustBundle::load(&trust_bundle)
                .map_err(|e| format!("trust bundle: {e}"))
                .and_then(|b| tongban_gateway::audit::archive::verify(&archive, &b));
            match checked {
                Ok(s) => {
                    println!(
                        "archive verifies: {}'s records {} to {}, {} signed checkpoint(s), the last at seq {}",
                        s.city, s.from_seq, s.to_seq, s.checkpoints, s.to_seq
                    );
                    ExitCode::SUCCESS
                }
                Err(why) => {
                    eprintln!("tongban: the archive does not verify: {why}");
                    ExitCode::from(super::EX_DATAERR)
                }
            }
        }
        AuditCmd::Prune { config, archive } => prune(&config, &archive),
        online => crate::block_on(run_online(online)),
    }
}

fn archive(
    config: &std::path::Path,
    from: Option<u64>,
    to: Option<u64>,
    out: &std::path::Path,
) -> ExitCode {
    let done = tongban_gateway::NodeConfig::load(config)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            let ca = city_ca(&c)?;
            tongban_gateway::audit::archive::write(&c.data_dir, &c.cert_path, &ca, from, to, out)
        });
    match done {
        Ok(s) => {
            println!(
                "archived {}'s records {} to {} ({} checkpoint(s)) in {}",
                s.city,
                s.from_seq,
                s.to_seq,
                s.checkpoints,
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("tongban: {why}");
            ExitCode::FAILURE
        }
    }
}

/// The PEM of the node's city's CA, from its trust bundle file.
fn city_ca(c: &tongban_gateway::NodeConfig) -> Result<Vec<u8>, String> {
    let text = std::fs::read_to_string(&c.trust_bundle_path)
        .map_err(|e| format!("{}: {e}", c.trust_bundle_path.display()))?;
    let file: tongban_gateway::trust::TrustBundleFile =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", c.trust_bundle_path.display()))?;
    let entry = file
        .cities
        .into_iter()
        .find(|e| e.id == c.city)
        .ok_or_else(|| format!("the trust bundle lists no city `{}`", c.city))?;
    Ok(entry.ca_pem.into_bytes())
}

fn prune(config: &std::path::Path, archive: &std::path::Path) -> ExitCode {
    let done = tongban_gateway::NodeConfig::load(config)
        .map_err(|e| e.to_string())
        .and_then(|c| {
            let bundle = tongban_gateway::trust::TrustBundle::load(&c.trust_bundle_path)
                .map_err(|e| format!("trust bundle: {e}"))?;
            tongban_gateway::audit::archive::prune(
                &c.data_dir,
                archive,
                &bundle,
                &c.audit.retention,
                tongban_gateway::audit::now_ms(),
            )
        });
    match done {
        Ok(p) => {
            println!(
                "pruned {} segment(s), {} record(s): the log now starts after seq {}{}",
                p.segments,
                p.records,
                p.base,
                if p.stopped.is_empty() {
                    String::new()
                } else {
                    format!(" (stopped: {})", p.stopped)
                }
            );
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("tongban: {why}");
            ExitCode::FAILURE
        }
    }
}

fn verify_proof(file: &std::path::Path, bundle: &std::path::Path) -> ExitCode {
    use tongban_gateway::audit::proof::{self, Checked};
    let checked = std::fs::read_to_string(file)
        .map_err(|e| format!("cannot read {}: {e}", file.display()))
        .and_then(|t| serde_json::from_str(&t).map_err(|e| format!("{}: {e}", file.display())))
        .and_then(|v| proof::from_json(&v))
        .and_then(|resp| {
            let bundle = tongban_gateway::trust::TrustBundle::load(bundle)
                .map_err(|e| format!("trust bundle: {e}"))?;
            proof::verify(&resp, &bundle)
        });
    match checked {
        Ok(Checked::Inclusion {
            city,
            seq,
            tree_size,
            record,
        }) => {
            println!(
                "proved: record {seq} of {city}'s audit log is in the tree of {tree_size} records its node signed"
            );
            print_record(&record);
            ExitCode::SUCCESS
        }
        Ok(Checked::Consistency {
            city,
            first,
            second,
        }) => {
            println!(
                "proved: {city}'s checkpoint at seq {second} extends its checkpoint at seq {first}"
            );
            ExitCode::SUCCESS
        }
        Err(why) => {
            eprintln!("tongban: the proof does not verify: {why}");
            ExitCode::from(super::EX_DATAERR)
        }
    }
}

fn reindex(data_dir: &std::path::Path) -> ExitCode {
    match tongban_gateway::audit::reindex_offline(data_dir) {
        Ok(r) => {
            println!("reindexed {} records (head seq {})", r.records, r.head.seq);
            match r.first_bad {
                None => ExitCode::SUCCESS,
                Some((seq, why)) => {
                    println!("the log stops verifying at seq {seq}: {why}");
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("tongban: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `tongban audit verify`: exit 0 when the chain verifies, 1 when broken (naming the first
/// bad sequence), 64 when there is no log.
fn audit_verify(data_dir: &std::path::Path) -> ExitCode {
    match tongban_gateway::audit::verify_offline(data_dir) {
        Ok((report, with_checkpoints)) => {
            let cps = if with_checkpoints {
                "and its signed checkpoints verify"
            } else {
                "verifies (signed checkpoints not checked: the store is in use or absent)"
            };
            if let (Some(torn), Some((_, why))) = (&report.torn_tail, &report.first_bad) {
                // Not a break in the chain: what a crash leaves, cut at the next start.
                println!(
                    "ok: {} records, head seq {} hash {}; the chain {cps}",
                    report.records,
                    report.head.seq,
                    hex::encode(report.head.hash)
                );
                println!(
                    "note: {} has a {why} (bytes {}..{})",
                    torn.segment.display(),
                    torn.start,
                    torn.end
                );
                return ExitCode::SUCCESS;
            }
            match report.first_bad {
                None => {
                    println!(
                        "ok: {} records, head seq {} hash {}; the chain {cps}",
                        report.records,
                        report.head.seq,
                        hex::encode(report.head.hash)
                    );
                    ExitCode::SUCCESS
                }
                Some((seq, reason)) => {
                    println!(
                        "BROKEN at seq {seq}: {reason} ({} records verify before it)",
                        report.records
                    );
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("tongban: {e}");
            ExitCode::from(EX_CONFIG)
        }
    }
}

fn print_record(r: &tongban_proto::audit::v1::AuditRecord) {
    if let Some(c) = &r.state_change {
        println!(
            "seq {:<6} {} {:<8} change {} {} by {}/{} {} ({}){}{}",
            r.seq,
            r.request_id,
            r.node_city,
            tongban_gateway::audit::change::kind_name(c.kind),
            c.object,
            r.caller_city,
            r.caller_org,
            r.caller_person,
            r.caller_kind,
            if c.version.is_empty() {
                String::new()
            } else {
                format!(" version {}", c.version)
            },
            if c.digest.is_empty() {
                String::new()
            } else {
                format!(" sha256 {}", c.digest)
            },
        );
        return;
    }
    println!(
        "seq {:<6} {} {:<8} side {:<8} caller {}/{} → {} {}/{} purpose {} status {} {}µs{}",
        r.seq,
        r.request_id,
        r.node_city,
        match r.side {
            1 => "home",
            2 => "provider",
            3 => "local",
            _ => "?",
        },
        r.caller_city,
        r.caller_org,
        r.target_city,
        r.service,
        r.method,
        r.purpose,
        r.grpc_status,
        r.duration_us,
        if r.receipt_verified {
            " receipt ok"
        } else {
            ""
        }
    );
}

/// Says when an answer came before the node's index caught up with its log.
fn print_coverage(c: Option<tongban_proto::audit::v1::Coverage>) {
    if let Some(c) = c.filter(|c| !c.complete) {
        println!(
            "(incomplete: the node's index reached seq {} of {}; records after it are not in this answer, ask again)",
            c.indexed_seq, c.head_seq
        );
    }
}

async fn run_online(cmd: AuditCmd) -> anyhow::Result<ExitCode> {
    use tongban_proto::audit::v1::audit_client::AuditClient;
    use tongban_proto::audit::v1::{GetRequest, QueryRequest};
    let result = match cmd {
        AuditCmd::Query {
            at,
            caller,
            service,
            from_ms,
            to_ms,
            limit,
        } => AuditClient::new(at.connect().await?)
            .query(QueryRequest {
                from_ms,
                to_ms,
                caller,
                service,
                page_token: String::new(),
                limit,
            })
            .await
            .map(|r| {
                let r = r.into_inner();
                r.records.iter().for_each(print_record);
                print_coverage(r.coverage);
                for why in &r.unreachable {
                    println!("(missing: {why})");
                }
                if !r.next_page_token.is_empty() {
                    println!("(more: next page token {})", r.next_page_token);
                }
            }),
        AuditCmd::Show { at, request_id } => AuditClient::new(at.connect().await?)
            .get(GetRequest { request_id })
            .await
            .map(|r| {
                let r = r.into_inner();
                println!("this node:");
                r.local.iter().for_each(print_record);
                print_coverage(r.coverage);
                for why in &r.unreachable {
                    println!("  (missing: {why})");
                }
                println!("peer:");
                r.peer.iter().for_each(print_record);
                if !r.peer_error.is_empty() {
                    println!("  ({})", r.peer_error);
                }
            }),
        AuditCmd::Prove {
            at,
            seq,
            from,
            to,
            out,
        } => {
            use tongban_proto::audit::v1::{prove_request::What, ConsistencyRequest, ProveRequest};
            let what = match (seq, from) {
                (Some(seq), _) => What::InclusionOfSeq(seq),
                (None, Some(from_seq)) => What::Consistency(ConsistencyRequest {
                    from_seq,
                    to_seq: to.unwrap_or(0),
                }),
                (None, None) => anyhow::bail!("name --seq, or --from and --to"),
            };
            let r = AuditClient::new(at.connect().await?)
                .prove(ProveRequest { what: Some(what) })
                .await;
            match r {
                Ok(r) => {
                    let json = tongban_gateway::audit::proof::to_json(&r.into_inner());
                    std::fs::write(&out, serde_json::to_string_pretty(&json)?)?;
                    println!("proof written to {}", out.display());
                    Ok(())
                }
                Err(s) => Err(s),
            }
        }
        AuditCmd::Verify { .. }
        | AuditCmd::Reindex { .. }
        | AuditCmd::VerifyProof { .. }
        | AuditCmd::Archive { .. }
        | AuditCmd::VerifyArchive { .. }
        | AuditCmd::Prune { .. } => return Ok(ExitCode::FAILURE),
    };
    Ok(crate::client::exit_code(result))
}
