//! What a node authorised on is what the provider sees (issue 7): the caller's own spelling
//! of purpose, subject, catalog code, target city and organisation is replaced by the value
//! the node checked, locally and across the boundary.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tongban_proto::crosscity::v1::cross_city_service_client::CrossCityServiceClient;
use tongban_proto::crosscity::v1::cross_city_service_server::{
    CrossCityService, CrossCityServiceServer,
};
use tongban_proto::crosscity::v1::{
    ApplicationStatus, GetStatusRequest, SubmitRequest, SubmitResponse,
};
use tongban_tests::{authorize, Fed};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};

/// A provider that keeps the metadata of every Submit it receives.
#[derive(Clone, Default)]
struct Recorder {
    seen: Arc<Mutex<Vec<MetadataMap>>>,
}

#[tonic::async_trait]
impl CrossCityService for Recorder {
    async fn submit(&self, r: Request<SubmitRequest>) -> Result<Response<SubmitResponse>, Status> {
        self.seen.lock().unwrap().push(r.metadata().clone());
        Ok(Response::new(SubmitResponse::default()))
    }
    async fn get_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<ApplicationStatus>, Status> {
        Err(Status::unimplemented("recorder"))
    }
    type WatchStatusStream = tokio_stream::Empty<Result<ApplicationStatus, Status>>;
    async fn watch_status(
        &self,
        _: Request<GetStatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        Err(Status::unimplemented("recorder"))
    }
}

async fn start_recorder() -> (Recorder, String) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let rec = Recorder::default();
    let svc = CrossCityServiceServer::new(rec.clone());
    tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
            .await;
    });
    (rec, url)
}

/// A valid resident id whose check character is `X`, written with a lower-case `x`.
fn resident_id_ending_in_x() -> String {
    (0..1000u32)
        .map(|n| format!("11010519491231{n:03}"))
        .find(|s| tongban_gateway::subject::check_digit(s) == Some('X'))
        .map(|s| format!("{s}x"))
        .expect("some id has check character X")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_provider_sees_exactly_what_was_authorised() {
    let f = Fed::start(&["jinan", "qingdao"]).await;
    let mut recorders = Vec::new();
    for city in ["jinan", "qingdao"] {
        let (rec, url) = start_recorder().await;
        f.register_with_codes(city, "meta", &url, &["JQ-19"]).await;
        recorders.push((city, rec));
    }
    assert!(
        f.fed
            .wait_until_federated(tongban_tests::CONVERGE, |_, p| p.services.len() >= 2)
            .await
    );
    let subject = resident_id_ending_in_x();
    for (target, rec) in &recorders {
        let mut req = Request::new(SubmitRequest::default());
        req.set_timeout(Duration::from_secs(5));
        authorize(&mut req, &f.fed.token("jinan", "hrss").unwrap());
        let md = req.metadata_mut();
        md.insert(
            "x-tongban-purpose",
            MetadataValue::from_static("CASE-HANDLING"),
        );
        md.insert("x-tongban-subject", subject.parse().unwrap());
        md.insert(
            "x-tongban-catalog-code",
            MetadataValue::from_static("JQ-19"),
        );
        md.insert(
            "x-tongban-target-city",
            target.to_uppercase().parse().unwrap(),
        );
        md.insert("x-tongban-target-org", MetadataValue::from_static(" META "));
        // A principal of the caller's own making is dropped; the node sets its own.
        md.insert(
            "x-tongban-principal",
            MetadataValue::from_static("kind=citizen;city=qingdao;org=gaj;person=forged"),
        );
        CrossCityServiceClient::new(f.channel("jinan").await)
            .submit(req)
            .await
            .unwrap_or_else(|e| panic!("jinan → {target}: {e:?}"));
        let seen = rec
            .seen
            .lock()
            .unwrap()
            .pop()
            .expect("the provider was called");
        let get = |k: &str| {
            seen.get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let what = format!("jinan → {target}");
        let expected = [
            ("x-tongban-purpose", "case-handling".to_string()),
            ("x-tongban-subject", subject.to_uppercase()),
            ("x-tongban-catalog-code", "JQ-19".to_string()),
            ("x-tongban-target-city", target.to_string()),
            ("x-tongban-target-org", "meta".to_string()),
            ("x-tongban-caller", "jinan/hrss".to_string()),
            ("x-tongban-origin-city", "jinan".to_string()),
            // The person behind the call, as the node vouches for it (the dev token's
            // `sub`), the same locally and across the boundary.
            (
                "x-tongban-principal",
                "kind=official;city=jinan;org=hrss;person=hrss-system".to_string(),
            ),
        ];
        for (key, want) in expected {
            assert_eq!(get(key), Some(want), "{what}: {key}");
        }
        assert!(get("authorization").is_none(), "{what}");
    }
    f.shutdown().await;
}
