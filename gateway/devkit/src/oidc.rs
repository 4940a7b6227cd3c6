//! The dev identity provider's sign-in for citizens, in the shape real city identity
//! providers speak: OpenID Connect's authorization-code flow with PKCE (RFC 7636, `S256`
//! only), for a public client (a portal's page, no client secret).
//!
//! - `GET /.well-known/openid-configuration`: where the endpoints are;
//! - `GET /jwks.json`: the keys the city's node trusts (`auth.jwks_file` holds the same);
//! - `GET /authorize`: a sign-in page listing the dev users (a real provider asks for a
//!   password, a certificate or a face scan here);
//! - `POST /authorize`: the chosen user; redirects to the client's `redirect_uri` with a
//!   one-time code (60 s);
//! - `POST /token`: the code and the PKCE verifier for an access token: a JWT of the city
//!   with role `citizen`, `sub` = the resident id and `org` = the client's organisation.
//!
//! A portal is configured with the issuer's endpoints and its client id, so a real provider
//! replaces this one by configuration. The token endpoint answers CORS requests from the
//! origins of the registered redirect URIs (the page exchanges the code itself).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use http::{header, Method, Request, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;

use crate::idp::DevIdp;

/// A citizen the dev provider can sign in.
#[derive(Debug, Clone)]
pub struct DevUser {
    /// Shown on the sign-in page.
    pub name: String,
    /// GB 11643 resident identity number: the token's `sub`.
    pub resident_id: String,
}

/// The dev citizens of `city` (valid GB 11643 ids; Jinan's start with 3701, Qingdao's with
/// 3702).
pub fn dev_citizens(city: &str) -> Vec<DevUser> {
    let prefix = if city == "qingdao" {
        "370202"
    } else {
        "370102"
    };
    [
        ("张三 Zhang San", "19850312002"),
        ("李四 Li Si", "19920704013"),
    ]
    .iter()
    .map(|(name, rest)| DevUser {
        name: name.to_string(),
        resident_id: crate::demo::demo_subject(&format!("{prefix}{rest}")),
    })
    .collect()
}

/// The client id of the reference portal.
pub const PORTAL_CLIENT_ID: &str = "tongban-portal";

/// What the provider serves.
pub struct OidcSettings {
    /// The public client (a portal) allowed to sign citizens in.
    pub client_id: String,
    /// Exact redirect URIs of that client.
    pub redirect_uris: Vec<String>,
    /// The organisation tokens are issued for (`org` claim): the portal.
    pub org: String,
    pub users: Vec<DevUser>,
    /// Lifetime of an access token.
    pub token_ttl: Duration,
}

/// Lifetime of an authorization code.
const CODE_TTL: Duration = Duration::from_secs(60);

struct Pending {
    client_id: String,
    redirect_uri: String,
    challenge: String,
    resident_id: String,
    issued: Instant,
}

struct State {
    idp: DevIdp,
    settings: OidcSettings,
    /// The base URL this provider is reached at.
    base: String,
    codes: Mutex<HashMap<String, Pending>>,
}

type Body = http_body_util::Full<bytes::Bytes>;

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Body> {
    let mut r = Response::new(Body::from(body));
    *r.status_mut() = status;
    if let Ok(v) = header::HeaderValue::from_str(content_type) {
        r.headers_mut().insert(header::CONTENT_TYPE, v);
    }
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

fn json_reply(status: StatusCode, v: serde_json::Value) -> Response<Body> {
    reply(status, "application/json", v.to_string())
}

/// An OAuth error of the token endpoint (RFC 6749 §5.2).
fn oauth_error(error: &str, description: &str) -> Response<Body> {
    json_reply(
        StatusCode::BAD_REQUEST,
        json!({ "error": error, "error_description": description }),
    )
}

fn page(status: StatusCode, title: &str, body: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html lang=\"zh-CN\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>\
         body{{font-family:system-ui,sans-serif;max-width:28rem;margin:2rem auto;padding:0 1rem;color:#111;background:#fff}}\
         button{{display:block;width:100%;margin:.5rem 0;padding:.8rem;font-size:1rem;border:2px solid #0b4f9c;border-radius:.4rem;background:#0b4f9c;color:#fff;cursor:pointer}}\
         button:focus{{outline:3px solid #f5a623;outline-offset:2px}}\
         .error{{color:#a00}}</style></head><body>{body}</body></html>"
    );
    reply(status, "text/html; charset=utf-8", html)
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

fn form(query: &str) -> HashMap<String, String> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .filter_map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            let dec = |s: &str| percent_decode(&s.replace('+', " "));
            Some((dec(k)?, dec(v)?))
        })
        .collect()
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The origin (`scheme://host[:port]`) of a URL.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let host = rest.split('/').next()?;
    Some(format!("{scheme}://{host}"))
}

/// BASE64URL(SHA-256(verifier)), the S256 challenge of a PKCE verifier.
pub fn s256(verifier: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(digest.as_ref())
}

impl State {
    /// The authorization request's parameters, checked; an error is shown on the page
    /// (never redirected: the redirect URI may be the wrong one).
    fn authorization(&self, p: &HashMap<String, String>) -> Result<(), String> {
        let get = |k: &str| p.get(k).map(String::as_str).unwrap_or("");
        if get("client_id") != self.settings.client_id {
            return Err(format!("unknown client_id `{}`", get("client_id")));
        }
        if !self
            .settings
            .redirect_uris
            .iter()
            .any(|u| u == get("redirect_uri"))
        {
            return Err(format!(
                "redirect_uri `{}` is not registered for this client",
                get("redirect_uri")
            ));
        }
        if get("response_type") != "code" {
            return Err("response_type must be `code`".into());
        }
        if get("code_challenge_method") != "S256" {
            return Err("PKCE is required: code_challenge_method must be `S256`".into());
        }
        let challenge = get("code_challenge");
        if challenge.len() != 43
            || !challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("code_challenge must be a BASE64URL SHA-256 (43 characters)".into());
        }
        Ok(())
    }

    fn sign_in_page(&self, p: &HashMap<String, String>) -> Response<Body> {
        if let Err(why) = self.authorization(p) {
            return page(
                StatusCode::BAD_REQUEST,
                "登录请求无效 Invalid sign-in request",
                &format!(
                    "<h1>登录请求无效</h1><p class=\"error\" role=\"alert\">{}</p>",
                    escape(&why)
                ),
            );
        }
        let hidden: String = [
            "client_id",
            "redirect_uri",
            "state",
            "code_challenge",
            "code_challenge_method",
            "response_type",
            "nonce",
        ]
        .iter()
        .filter_map(|k| p.get(*k).map(|v| (k, v)))
        .map(|(k, v)| {
            format!(
                "<input type=\"hidden\" name=\"{k}\" value=\"{}\">",
                escape(v)
            )
        })
        .collect();
        let users: String = self
            .settings
            .users
            .iter()
            .enumerate()
            .map(|(i, u)| {
                let masked = tongban_gateway::subject::mask(&u.resident_id);
                format!(
                    "<button type=\"submit\" name=\"user\" value=\"{i}\" id=\"user-{i}\">{}（{}）</button>",
                    escape(&u.name),
                    escape(&masked)
                )
            })
            .collect();
        let city = escape(&self.idp.city);
        page(
            StatusCode::OK,
            "统一身份认证 Sign in",
            &format!(
                "<main><h1>{city} 统一身份认证（开发用）</h1>\
                 <p>Development identity provider of {city}: choose a citizen to sign in as.</p>\
                 <form method=\"post\" action=\"/authorize\">{hidden}{users}</form></main>"
            ),
        )
    }

    fn approve(&self, p: &HashMap<String, String>) -> Response<Body> {
        if let Err(why) = self.authorization(p) {
            return page(
                StatusCode::BAD_REQUEST,
                "登录请求无效 Invalid sign-in request",
                &format!("<p class=\"error\" role=\"alert\">{}</p>", escape(&why)),
            );
        }
        let user = p
            .get("user")
            .and_then(|u| u.parse::<usize>().ok())
            .and_then(|i| self.settings.users.get(i));
        let Some(user) = user else {
            return page(
                StatusCode::BAD_REQUEST,
                "登录请求无效 Invalid sign-in request",
                "<p class=\"error\" role=\"alert\">no such user</p>",
            );
        };
        let code = uuid::Uuid::new_v4().simple().to_string();
        let get = |k: &str| p.get(k).cloned().unwrap_or_default();
        if let Ok(mut codes) = self.codes.lock() {
            codes.retain(|_, c| c.issued.elapsed() < CODE_TTL);
            codes.insert(
                code.clone(),
                Pending {
                    client_id: get("client_id"),
                    redirect_uri: get("redirect_uri"),
                    challenge: get("code_challenge"),
                    resident_id: user.resident_id.clone(),
                    issued: Instant::now(),
                },
            );
        }
        let mut location = format!("{}?code={code}", get("redirect_uri"));
        if let Some(state) = p.get("state") {
            location.push_str(&format!("&state={}", percent_encode(state)));
        }
        let mut r = reply(StatusCode::SEE_OTHER, "text/plain", String::new());
        if let Ok(v) = header::HeaderValue::from_str(&location) {
            r.headers_mut().insert(header::LOCATION, v);
        }
        r
    }

    fn token(&self, p: &HashMap<String, String>) -> Response<Body> {
        let get = |k: &str| p.get(k).map(String::as_str).unwrap_or("");
        if get("grant_type") != "authorization_code" {
            return oauth_error(
                "unsupported_grant_type",
                "grant_type must be authorization_code",
            );
        }
        // A code is used once, whatever happens next.
        let pending = self
            .codes
            .lock()
            .ok()
            .and_then(|mut c| c.remove(get("code")));
        let Some(pending) = pending else {
            return oauth_error("invalid_grant", "unknown or already used code");
        };
        if pending.issued.elapsed() >= CODE_TTL {
            return oauth_error("invalid_grant", "the code expired");
        }
        if pending.client_id != get("client_id") {
            return oauth_error("invalid_grant", "the code was issued to another client");
        }
        if pending.redirect_uri != get("redirect_uri") {
            return oauth_error(
                "invalid_grant",
                "redirect_uri differs from the authorization request's",
            );
        }
        let verifier = get("code_verifier");
        if !(43..=128).contains(&verifier.len()) {
            return oauth_error(
                "invalid_request",
                "code_verifier must have 43 to 128 characters",
            );
        }
        if s256(verifier) != pending.challenge {
            return oauth_error(
                "invalid_grant",
                "code_verifier does not match the code_challenge",
            );
        }
        let ttl = self.settings.token_ttl;
        let roles = vec![tongban_gateway::auth::CITIZEN_ROLE.to_string()];
        match self
            .idp
            .issue(&self.settings.org, &roles, ttl, &pending.resident_id)
        {
            Ok(token) => json_reply(
                StatusCode::OK,
                json!({
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": ttl.as_secs(),
                    "scope": "openid",
                }),
            ),
            Err(e) => json_reply(
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({ "error": "server_error", "error_description": e.to_string() }),
            ),
        }
    }

    fn discovery(&self) -> Response<Body> {
        json_reply(
            StatusCode::OK,
            json!({
                // The `iss` of the tokens, which the node checks (auth.issuer).
                "issuer": crate::idp::issuer(&self.idp.city),
                "authorization_endpoint": format!("{}/authorize", self.base),
                "token_endpoint": format!("{}/token", self.base),
                "jwks_uri": format!("{}/jwks.json", self.base),
                "response_types_supported": ["code"],
                "grant_types_supported": ["authorization_code"],
                "code_challenge_methods_supported": ["S256"],
                "token_endpoint_auth_methods_supported": ["none"],
                "scopes_supported": ["openid"],
                "subject_types_supported": ["public"],
                "id_token_signing_alg_values_supported": ["EdDSA"],
            }),
        )
    }

    /// CORS for the token endpoint: the origins of the registered redirect URIs.
    fn cors(&self, origin: Option<&str>, r: &mut Response<Body>) {
        let Some(origin) = origin else { return };
        let allowed = self
            .settings
            .redirect_uris
            .iter()
            .filter_map(|u| origin_of(u))
            .any(|o| o == origin);
        if allowed {
            if let Ok(v) = header::HeaderValue::from_str(origin) {
                let h = r.headers_mut();
                h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, v);
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_METHODS,
                    header::HeaderValue::from_static("POST, OPTIONS"),
                );
                h.insert(
                    header::ACCESS_CONTROL_ALLOW_HEADERS,
                    header::HeaderValue::from_static("content-type"),
                );
                h.insert(header::VARY, header::HeaderValue::from_static("origin"));
            }
        }
    }

    async fn handle(self: Arc<Self>, req: Request<hyper::body::Incoming>) -> Response<Body> {
        use http_body_util::BodyExt as _;
        let (parts, body) = req.into_parts();
        let origin = parts
            .headers
            .get(header::ORIGIN)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let query = form(parts.uri.query().unwrap_or(""));
        let path = parts.uri.path();
        let read_form = |b: bytes::Bytes| form(&String::from_utf8_lossy(&b));
        let mut r = match (&parts.method, path) {
            (&Method::GET, "/.well-known/openid-configuration") => self.discovery(),
            (&Method::GET, "/jwks.json") => reply(
                StatusCode::OK,
                "application/json",
                DevIdp::jwks(&[&self.idp]),
            ),
            (&Method::GET, "/authorize") => self.sign_in_page(&query),
            (&Method::POST, "/authorize") | (&Method::POST, "/token") => {
                // Forms are small; anything larger is refused.
                let limited = http_body_util::Limited::new(body, 16 * 1024);
                match limited.collect().await {
                    Ok(b) => {
                        let p = read_form(b.to_bytes());
                        if path == "/token" {
                            self.token(&p)
                        } else {
                            self.approve(&p)
                        }
                    }
                    Err(_) => oauth_error("invalid_request", "the form is too large or unreadable"),
                }
            }
            (&Method::OPTIONS, "/token") => {
                reply(StatusCode::NO_CONTENT, "text/plain", String::new())
            }
            _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        };
        if path == "/token" {
            self.cors(origin.as_deref(), &mut r);
        }
        r
    }
}

/// A running dev sign-in service.
pub struct RunningOidc {
    /// The base URL, `http://127.0.0.1:PORT`.
    pub url: String,
    served: crate::local::Served,
}

impl RunningOidc {
    /// Serves `idp`'s sign-in on `listener`.
    pub fn start(
        listener: TcpListener,
        idp: DevIdp,
        settings: OidcSettings,
    ) -> std::io::Result<RunningOidc> {
        let url = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(State {
            idp,
            settings,
            base: url.clone(),
            codes: Mutex::new(HashMap::new()),
        });
        let served = crate::local::serve_http("dev sign-in", listener, move |req| {
            let state = state.clone();
            async move { state.handle(req).await }
        });
        Ok(RunningOidc { url, served })
    }

    pub async fn stop(self) {
        self.served.stop().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_rfc_7636_appendix_b() {
        assert_eq!(
            s256("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }

    #[test]
    fn forms_decode() {
        let f = form("a=1&redirect_uri=http%3A%2F%2F127.0.0.1%3A5173%2Fcb&b=x+y");
        assert_eq!(f["redirect_uri"], "http://127.0.0.1:5173/cb");
        assert_eq!(f["b"], "x y");
        assert_eq!(
            origin_of("http://127.0.0.1:5173/cb").as_deref(),
            Some("http://127.0.0.1:5173")
        );
    }
}
