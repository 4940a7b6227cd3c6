//! Serves the reference citizens' portal (`services/portal/dist`, built with
//! `npm run build`) for the demo: the files of that directory (nothing below it, nothing
//! outside it) and a `config.json` that points the page at the city's node and identity
//! provider. The page then talks to the node's web listener directly (gRPC-Web, CORS).

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use http::{header, Method, Response, StatusCode};
use serde_json::json;
use tokio::net::TcpListener;

/// Where the page is pointed.
pub struct PortalSite {
    pub city: String,
    pub web_url: String,
    /// The identity provider's base URL (its endpoints are below it).
    pub idp_url: String,
    pub client_id: String,
    pub cities: Vec<String>,
}

type Body = http_body_util::Full<bytes::Bytes>;

fn content_type(name: &str) -> &'static str {
    match name.rsplit('.').next() {
        Some("html") => "text/html; charset=utf-8",
        Some("js") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json") | Some("map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        _ => "application/octet-stream",
    }
}

/// A running portal site.
pub struct RunningPortal {
    /// `http://127.0.0.1:PORT/`: the page, and the redirect URI of its sign-in.
    pub url: String,
    served: crate::local::Served,
}

impl RunningPortal {
    /// The origin a portal on `listener` will have (for the nodes' CORS and the identity
    /// provider's redirect URI), before it is started.
    pub fn url_of(listener: &TcpListener) -> std::io::Result<String> {
        Ok(format!("http://{}/", listener.local_addr()?))
    }

    /// Serves `dist` (read once, now) with a `config.json` for `site`.
    pub fn start(
        listener: TcpListener,
        dist: &Path,
        site: &PortalSite,
    ) -> std::io::Result<RunningPortal> {
        let url = Self::url_of(&listener)?;
        let mut files: HashMap<String, (&'static str, bytes::Bytes)> = HashMap::new();
        for entry in std::fs::read_dir(dist)? {
            let entry = entry?;
            if !entry.file_type()?.is_file() {
                continue;
            }
            let name = entry.file_name().to_string_lossy().into_owned();
            let data = std::fs::read(entry.path())?;
            files.insert(format!("/{name}"), (content_type(&name), data.into()));
        }
        if !files.contains_key("/index.html") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!(
                    "{} has no index.html (build the portal: npm --prefix services/portal install && npm --prefix services/portal run build)",
                    dist.display()
                ),
            ));
        }
        let config = json!({
            "city": site.city,
            "webUrl": site.web_url,
            "authorizationEndpoint": format!("{}/authorize", site.idp_url),
            "tokenEndpoint": format!("{}/token", site.idp_url),
            "clientId": site.client_id,
            "redirectUri": url,
            "cities": site.cities,
        });
        files.insert(
            "/config.json".into(),
            ("application/json", config.to_string().into()),
        );
        let files = Arc::new(files);
        let served = crate::local::serve_http("portal site", listener, move |req| {
            let files = files.clone();
            async move { serve_file(&files, &req) }
        });
        Ok(RunningPortal { url, served })
    }

    pub async fn stop(self) {
        self.served.stop().await;
    }
}

fn serve_file(
    files: &HashMap<String, (&'static str, bytes::Bytes)>,
    req: &http::Request<hyper::body::Incoming>,
) -> Response<Body> {
    let path = match req.uri().path() {
        "/" => "/index.html",
        p => p,
    };
    let mut r = match (req.method(), files.get(path)) {
        (&Method::GET | &Method::HEAD, Some((ct, data))) => {
            let mut r = Response::new(Body::from(data.clone()));
            r.headers_mut()
                .insert(header::CONTENT_TYPE, header::HeaderValue::from_static(ct));
            r
        }
        _ => {
            let mut r = Response::new(Body::from("not found\n"));
            *r.status_mut() = StatusCode::NOT_FOUND;
            r
        }
    };
    let h = r.headers_mut();
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    h.insert(
        header::HeaderName::from_static("x-content-type-options"),
        header::HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::HeaderName::from_static("referrer-policy"),
        header::HeaderValue::from_static("no-referrer"),
    );
    r
}
