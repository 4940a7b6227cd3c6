//! `tongban medical import`: FHIR R4 resources into a city's result registry (with a large
//! attachment streamed); `query`: a patient's results and verdicts; `fetch`: a whole report,
//! its attachment checked against its SHA-256.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use tongban_medical::fhir_import::{self, Defaults};
use tongban_proto::medical::v1::result_registry_client::ResultRegistryClient;
use tongban_proto::medical::v1::PublishRequest;
use tongban_proto::metadata;

#[derive(Subcommand)]
pub enum MedicalCmd {
    /// Import a DiagnosticReport (Observations contained or bundled), an ImagingStudy, or a
    /// Bundle of them: check it (--dry-run) or publish it through a node. Invalid resources
    /// are refused naming the FHIRPath of the bad element (exit 65).
    Import(ImportArgs),
    /// A patient's results with their recognition verdicts: from one city (--city), or from
    /// every city whose registry the node lists, merged, partial when one does not answer.
    Query {
        /// The hospital's node (caller address).
        #[arg(long)]
        node: String,
        /// The hospital's caller JWT; env TONGBAN_TOKEN.
        #[arg(long, env = "TONGBAN_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long)]
        patient: String,
        /// The patient's consent for this hospital (target city `*` to ask every city).
        #[arg(long)]
        consent: String,
        /// Only this city; every city when absent.
        #[arg(long)]
        city: Option<String>,
        /// Recognition item codes or LOINC codes (repeat); every item when absent.
        #[arg(long = "item")]
        items: Vec<String>,
    },
    /// A whole report (GetReport) by its registry id: prints its header and writes its
    /// attachment to --out, streamed, checking its length and SHA-256 against the header
    /// (exit 65 when they differ; the file is removed).
    Fetch {
        /// The hospital's node (caller address).
        #[arg(long)]
        node: String,
        /// The hospital's caller JWT; env TONGBAN_TOKEN.
        #[arg(long, env = "TONGBAN_TOKEN", hide_env_values = true)]
        token: String,
        #[arg(long)]
        patient: String,
        /// The patient's consent for this hospital.
        #[arg(long)]
        consent: String,
        /// The city whose registry holds the report.
        #[arg(long)]
        city: String,
        /// The registry's id of the report (`<city>-rpt-…`, as query and import print it).
        #[arg(long)]
        registry_id: String,
        /// Where the attachment goes.
        #[arg(long)]
        out: PathBuf,
    },
}

/// What `tongban medical import` takes.
#[derive(clap::Args)]
pub struct ImportArgs {
    file: PathBuf,
    /// The patient's resident id, when `subject` carries no resident-id identifier.
    #[arg(long)]
    patient: Option<String>,
    /// The performing institution's credit code (and name), when `performer` has none.
    #[arg(long)]
    institution: Option<String>,
    #[arg(long)]
    institution_name: Option<String>,
    /// Only check and print what would be published.
    #[arg(long)]
    dry_run: bool,
    /// Import the usable results and skip the others, listing each skipped element with its
    /// FHIRPath and why (by default one unusable element refuses the whole file).
    #[arg(long)]
    skip_invalid: bool,
    /// The hospital's node (caller address), e.g. http://127.0.0.1:7000.
    #[arg(long, required_unless_present = "dry_run")]
    node: Option<String>,
    /// The hospital's caller JWT; env TONGBAN_TOKEN.
    #[arg(long, env = "TONGBAN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// The node's city (the registry published to).
    #[arg(long, required_unless_present = "dry_run")]
    city: Option<String>,
    /// The patient's consent token for this hospital (ResultRegistry, medical-treatment).
    #[arg(long)]
    consent: Option<String>,
    /// The report's attachment (a DICOM study, a PDF): streamed in chunks with its SHA-256,
    /// whatever its size. The file must hold exactly one report.
    #[arg(long)]
    attachment: Option<PathBuf>,
}

/// The metadata of a call to `city`'s registry about `patient`, naming `item`.
fn registry_call(
    token: &str,
    city: &str,
    patient: &str,
    item: &str,
    consent: Option<&str>,
) -> anyhow::Result<tonic::metadata::MetadataMap> {
    let mut md = tonic::metadata::MetadataMap::new();
    md.insert("authorization", format!("Bearer {}", token.trim()).parse()?);
    md.insert(metadata::TARGET_CITY, city.parse()?);
    md.insert(metadata::PURPOSE, "medical-treatment".parse()?);
    md.insert(metadata::SUBJECT, patient.parse()?);
    md.insert(metadata::CATALOG_CODE, item.parse()?);
    if let Some(c) = consent {
        md.insert(metadata::CONSENT, c.parse()?);
    }
    Ok(md)
}

async fn channel(node: &str) -> anyhow::Result<tonic::transport::Channel> {
    tonic::transport::Channel::from_shared(node.to_string())
        .map_err(|_| anyhow::anyhow!("`{node}` is not a node url (e.g. http://127.0.0.1:7000)"))?
        .connect()
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach the node at {node}: {e}"))
}

pub fn run(cmd: MedicalCmd) -> ExitCode {
    match cmd {
        MedicalCmd::Query {
            node,
            token,
            patient,
            consent,
            city,
            items,
        } => query(node, token, patient, consent, city, items),
        MedicalCmd::Import(args) => import(args),
        MedicalCmd::Fetch {
            node,
            token,
            patient,
            consent,
            city,
            registry_id,
            out,
        } => crate::block_on(async move {
            let md = registry_call(
                &token,
                &city,
                &patient,
                tongban_medical::READ_ITEM,
                Some(&consent),
            )?;
            let mut client = ResultRegistryClient::new(channel(&node).await?);
            let file = tokio::fs::File::create(&out)
                .await
                .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", out.display()))?;
            let started = std::time::Instant::now();
            let fetched =
                match tongban_medical::transfer::fetch(&mut client, md, &registry_id, file).await {
                    Ok(f) => f,
                    Err(s) => {
                        let _ = std::fs::remove_file(&out);
                        eprintln!("tongban: {:?}: {}", s.code(), s.message());
                        return Ok(ExitCode::FAILURE);
                    }
                };
            let secs = started.elapsed().as_secs_f64();
            let h = &fetched.header;
            println!(
                "report {} ({}): {} result(s), {}",
                h.report_id,
                h.registry_id,
                h.results.len(),
                h.institution_code
            );
            if !fetched.intact() {
                let _ = std::fs::remove_file(&out);
                eprintln!(
                    "tongban: the attachment arrived damaged: {} bytes with SHA-256 {}, the registry stored {} bytes with SHA-256 {}",
                    fetched.bytes, fetched.sha256, h.attachment_bytes, h.attachment_sha256
                );
                return Ok(ExitCode::from(crate::EX_DATAERR));
            }
            println!(
                "attachment: {} bytes, sha256 {} (checked), {:.1} MB/s, written to {}",
                fetched.bytes,
                fetched.sha256,
                fetched.bytes as f64 / 1e6 / secs.max(1e-9),
                out.display()
            );
            Ok(ExitCode::SUCCESS)
        }),
    }
}

/// Checks a FHIR file and, unless `--dry-run`, publishes its reports through the node.
fn import(args: ImportArgs) -> ExitCode {
    let ImportArgs {
        file,
        patient,
        institution,
        institution_name,
        dry_run,
        skip_invalid,
        node,
        token,
        city,
        consent,
        attachment,
    } = args;
    let text = match std::fs::read_to_string(&file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tongban: cannot read {}: {e}", file.display());
            return ExitCode::from(crate::EX_CONFIG);
        }
    };
    let defaults = Defaults {
        patient,
        institution_code: institution,
        institution_name,
    };
    let imported = if skip_invalid {
        fhir_import::import_skipping_invalid(&text, &defaults)
    } else {
        fhir_import::import(&text, &defaults).map(|r| (r, Vec::new()))
    };
    let (reports, skipped) = match imported {
        Ok(r) => r,
        Err(e) => {
            eprintln!("tongban: {} refused: {e}", file.display());
            return ExitCode::from(crate::EX_DATAERR);
        }
    };
    for s in &skipped {
        println!("skipped {}: {}", s.at, s.message);
    }
    for r in &reports {
        let codes: Vec<String> = r
            .results
            .iter()
            .map(|x| {
                if x.loinc.is_empty() {
                    format!("{} {}", x.modality, x.body_site)
                } else {
                    x.loinc.clone()
                }
            })
            .collect();
        println!(
            "report {}: {} result(s) [{}], {}",
            r.report_id,
            r.results.len(),
            codes.join(", "),
            r.institution_code
        );
    }
    if attachment.is_some() && reports.len() != 1 {
        eprintln!(
            "tongban: --attachment needs a file holding exactly one report; {} holds {}",
            file.display(),
            reports.len()
        );
        return ExitCode::from(crate::EX_CONFIG);
    }
    if dry_run {
        return ExitCode::SUCCESS;
    }
    crate::block_on(async move {
        let node = node.unwrap_or_default();
        let token = token
            .ok_or_else(|| anyhow::anyhow!("--token (or TONGBAN_TOKEN) is needed to publish"))?;
        let city = city.unwrap_or_default();
        let mut client = ResultRegistryClient::new(channel(&node).await?);
        for mut r in reports {
            let md = registry_call(
                &token,
                &city,
                &r.patient_id,
                tongban_medical::PUBLISH_ITEM,
                consent.as_deref(),
            )?;
            let id = r.report_id.clone();
            let published = match &attachment {
                None => {
                    let mut req = tonic::Request::new(PublishRequest { report: Some(r) });
                    *req.metadata_mut() = md;
                    client.publish(req).await.map(|a| (a.into_inner(), 0.0))
                }
                Some(path) => {
                    let open = || async {
                        tokio::fs::File::open(path)
                            .await
                            .map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))
                    };
                    let (sha256, bytes) = tongban_medical::transfer::digest(open().await?).await?;
                    r.attachment_sha256 = sha256;
                    let started = std::time::Instant::now();
                    tongban_medical::transfer::publish_stream(&mut client, md, r, open().await?)
                        .await
                        .map(|a| {
                            let secs = started.elapsed().as_secs_f64().max(1e-9);
                            (a, bytes as f64 / 1e6 / secs)
                        })
                }
            };
            match published {
                Ok((a, mbps)) => {
                    print!("published {id} as {}", a.registry_id);
                    if attachment.is_some() {
                        print!(" with its attachment ({mbps:.1} MB/s)");
                    }
                    println!();
                }
                Err(s) => {
                    eprintln!("tongban: {:?}: {}", s.code(), s.message());
                    return Ok(ExitCode::FAILURE);
                }
            }
        }
        Ok(ExitCode::SUCCESS)
    })
}

fn query(
    node: String,
    token: String,
    patient: String,
    consent: String,
    city: Option<String>,
    items: Vec<String>,
) -> ExitCode {
    use tongban_medical::federated::{query_everywhere, registry_cities, Asker};
    crate::block_on(async move {
        let channel = tonic::transport::Channel::from_shared(node.clone())?
            .connect()
            .await
            .map_err(|e| anyhow::anyhow!("cannot reach the node at {node}: {e}"))?;
        let asker = Asker {
            token,
            patient,
            consent,
            timeout: std::time::Duration::from_secs(10),
        };
        let cities = match city {
            Some(c) => vec![c],
            None => registry_cities(channel.clone(), &asker)
                .await
                .map_err(|s| anyhow::anyhow!("{:?}: {}", s.code(), s.message()))?,
        };
        let q = tongban_proto::medical::v1::QueryRequest {
            item_codes: items,
            valid_at_ms: 0,
        };
        let (answer, missing) = query_everywhere(channel, &cities, &asker, q).await;
        for r in &answer.results {
            let v = r.verdict.clone().unwrap_or_default();
            let res = r.result.clone().unwrap_or_default();
            println!(
                "{:<8} {:<24} {:<8} {:<10} {}",
                r.city,
                r.report_id,
                if r.item.is_empty() {
                    res.loinc.as_str()
                } else {
                    r.item.as_str()
                },
                if v.eligible {
                    "eligible"
                } else {
                    "not eligible"
                },
                v.reasons.join("; ")
            );
        }
        for m in &missing {
            println!(
                "partial: {} did not answer ({:?}: {})",
                m.city, m.code, m.message
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}
