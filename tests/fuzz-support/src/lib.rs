//! One function per fuzz target: each takes arbitrary bytes, gives them to the parsers that
//! read outside input, and must return without panicking, hanging or allocating without
//! bound, whatever the bytes. `tests/fuzz` (cargo-fuzz, libFuzzer) calls them with generated
//! inputs; `tests/tests/fuzz_corpora.rs` replays the committed corpora through them on every
//! test run.

use std::collections::BTreeMap;
use std::sync::OnceLock;

/// One target: what it is given arbitrary bytes to do.
pub type Target = fn(&[u8]);

/// The targets, by name (the directory of each corpus under `tests/fuzz/corpus`).
pub const TARGETS: &[(&str, Target)] = &[
    ("form", form),
    ("fhir", fhir),
    ("metadata", metadata),
    ("tokens", tokens),
    ("audit_frames", audit_frames),
    ("catalog", catalog),
];

fn catalog_once() -> Option<&'static tongban_catalog::Catalog> {
    static C: OnceLock<Option<tongban_catalog::Catalog>> = OnceLock::new();
    C.get_or_init(|| tongban_catalog::Catalog::embedded().ok())
        .as_ref()
}

/// Form validation: the first byte picks one of the 27 items, the rest is `name=value`
/// lines, as a department receives a form.
pub fn form(data: &[u8]) {
    let Some(catalog) = catalog_once() else {
        return;
    };
    let Some((first, rest)) = data.split_first() else {
        return;
    };
    let items = catalog.items();
    let item = &items[usize::from(*first) % items.len()];
    let text = String::from_utf8_lossy(rest);
    let fields: BTreeMap<String, String> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), tongban_catalog::normalise(v)))
        .collect();
    let _ = item.validate(&fields);
    for f in &item.fields {
        if let Some(v) = fields.get(&f.name) {
            let _ = f.kind.check(v);
        }
    }
}

/// FHIR R4 import (a hospital's file).
pub fn fhir(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = tongban_medical::fhir_import::import(
        text,
        &tongban_medical::fhir_import::Defaults::default(),
    );
}

/// The `x-tongban-*` metadata a node or a provider reads.
pub fn metadata(data: &[u8]) {
    use tongban_proto::metadata as m;
    let _ = m::is_request_id(data);
    let text = String::from_utf8_lossy(data);
    let _ = m::VouchedPrincipal::parse(&text);
    let _ = m::check_resident_id(&text);
    let _ = m::check_catalog_code(&text);
    let _ = m::check_lowercase_id(&text, 64);
    let _ = tongban_gateway::grpc::parse_timeout(&text);
    let _ = tongban_gateway::error::Undecodable::from_message(&text);
}

/// Tokens and assertions: a caller's JWKS, a JWT's header, a caller assertion and a consent
/// checked with a fixed key.
pub fn tokens(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = tongban_gateway::auth::KeySet::parse(text);
    let _ = jsonwebtoken::decode_header(text);
    let key = [7u8; 32];
    let expected = tongban_gateway::assertion::Expected {
        peer_city: "jinan",
        own_city: "qingdao",
        request_id: "r",
        service: "s.S",
        method: "M",
    };
    let _ = tongban_gateway::assertion::verify(Some(text), &key, None, &expected);
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(text) {
        headers.insert(tongban_proto::metadata::CONSENT, v);
        let _ = tongban_gateway::consent::presented_id(&headers);
    }
}

/// The audit log's frame reader, on a damaged or hostile segment.
pub fn audit_frames(data: &[u8]) {
    let mut n = 0u32;
    let _ = tongban_gateway::audit::log::read_frames(1, data, true, |_| {
        n += 1;
        n < 10_000
    });
    let _ = tongban_gateway::audit::log::read_frames(1, data, false, |_| true);
}

/// The catalog loader and the division table (operators' files).
pub fn catalog(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = tongban_catalog::Catalog::parse(text);
    let _ = tongban_catalog::Divisions::parse(text);
}
