//! What the instance's unit tests share: a thread with a `LocalSet` to run
//! instances on, a request, and a response's body read to its end.

use std::future::Future;

use crate::request::{IncomingRequest, OutgoingResponse};

pub(crate) fn on_local_thread<F: Future<Output = ()>>(make: impl FnOnce() -> F + Send + 'static) {
    crate::init_v8();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&runtime, make());
    })
    .join()
    .expect("the test thread did not panic or abort");
}

pub(crate) fn request(url: &str) -> IncomingRequest {
    IncomingRequest {
        method: http::Method::GET,
        version: http::Version::HTTP_11,
        url: url.to_string(),
        headers: Default::default(),
        body: None,
        received: std::time::Instant::now(),
        request_id: "".into(),
    }
}

pub(crate) async fn body_text(response: OutgoingResponse) -> String {
    use http_body_util::BodyExt;
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}
