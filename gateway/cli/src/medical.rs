//! `tongban medical import`: FHIR R4 resources into a city's result registry.

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
    if dry_run {
        return ExitCode::SUCCESS;
    }
    crate::block_on(async move {
        let node = node.unwrap_or_default();
        let token = token
            .ok_or_else(|| anyhow::anyhow!("--token (or TONGBAN_TOKEN) is needed to publish"))?;
        let city = city.unwrap_or_default();
        let mut client = ResultRegistryClient::new(crate::client::connect(&node, &token).await?);
        for r in reports {
            let mut req = tonic::Request::new(PublishRequest {
                report: Some(r.clone()),
            });
            let md = req.metadata_mut();
            md.insert(metadata::TARGET_CITY, city.parse()?);
            md.insert(metadata::PURPOSE, "medical-treatment".parse()?);
            md.insert(metadata::SUBJECT, r.patient_id.parse()?);
            md.insert(
                metadata::CATALOG_CODE,
                tongban_medical::PUBLISH_ITEM.parse()?,
            );
            if let Some(c) = &consent {
                md.insert(metadata::CONSENT, c.parse()?);
            }
            match client.publish(req).await {
                Ok(_) => println!("published {}", r.report_id),
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
