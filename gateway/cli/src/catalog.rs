//! `tongban catalog`: check and show a catalog file without starting anything.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

#[derive(Subcommand)]
pub enum CatalogCmd {
    /// Load and validate a catalog file: exit 0, or 64 naming the item and the key.
    Check { file: PathBuf },
    /// Load and validate medical recognition rules (deploy/medical/): exit 0, or 64 naming
    /// the entry.
    CheckRules { file: PathBuf },
    /// Load and validate a GB/T 2260 division table (deploy/divisions/): exit 0, or 64
    /// naming the line.
    CheckDivisions { file: PathBuf },
    /// Print a catalog's items (the embedded one without --file).
    Show {
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

pub fn run(cmd: CatalogCmd) -> ExitCode {
    let path = match &cmd {
        CatalogCmd::CheckRules { file } => return check_rules(file),
        CatalogCmd::CheckDivisions { file } => return check_divisions(file),
        CatalogCmd::Check { file } => Some(file.clone()),
        CatalogCmd::Show { file } => file.clone(),
    };
    let catalog = match tongban_catalog::Catalog::load_or_embedded(path.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tongban: {e}");
            return ExitCode::from(crate::EX_CONFIG);
        }
    };
    match cmd {
        CatalogCmd::Check { .. } => println!(
            "ok: {} {}, {} items, {} data items, {} bundles, {} organisations, division codes of revision {}",
            catalog.federation,
            catalog.version,
            catalog.items().len(),
            catalog.data_items().len(),
            catalog.bundles.len(),
            catalog.organisations.len(),
            catalog.divisions.version
        ),
        CatalogCmd::CheckRules { .. } | CatalogCmd::CheckDivisions { .. } => {}
        CatalogCmd::Show { .. } => {
            for i in catalog.items() {
                let providers: Vec<String> = i
                    .providers
                    .iter()
                    .map(|(c, o)| format!("{c}/{o}"))
                    .collect();
                println!(
                    "{}  {}  {} · {} · {} · {} working days · {}{}",
                    i.code,
                    i.name_zh,
                    i.name_en,
                    i.category,
                    i.produces.as_str(),
                    i.time_limit_days,
                    providers.join(" "),
                    if i.personal_data {
                        " · personal data"
                    } else {
                        ""
                    }
                );
            }
        }
    }
    ExitCode::SUCCESS
}

fn check_rules(file: &std::path::Path) -> ExitCode {
    match tongban_medical::Rules::load_or_embedded(Some(file)) {
        Ok(r) => {
            println!(
                "ok: {} {}, {} items, {} accreditations",
                r.region,
                r.version,
                r.items.len(),
                r.accreditations.len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tongban: {e}");
            ExitCode::from(crate::EX_CONFIG)
        }
    }
}

fn check_divisions(file: &std::path::Path) -> ExitCode {
    let text = match std::fs::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("tongban: cannot read {}: {e}", file.display());
            return ExitCode::from(crate::EX_CONFIG);
        }
    };
    match tongban_catalog::Divisions::parse(&text) {
        Ok(d) => {
            println!(
                "ok: revision {} (oldest {}), {} codes, {} in use",
                d.version,
                d.oldest,
                d.len(),
                d.current_len()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("tongban: {}: {e}", file.display());
            ExitCode::from(crate::EX_CONFIG)
        }
    }
}
