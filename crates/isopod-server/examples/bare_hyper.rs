//! The ceiling the benchmarks measure isopod's HTTP path against: a hello
//! world served by hyper alone, with the HTTP/1 settings isopod's listeners
//! use (keep-alive, `TCP_NODELAY`, flat writes) on one current-thread tokio runtime, as
//! one of isopod's worker threads runs. No isolate, no routing.
//!
//! `cargo run --release --example bare_hyper -p isopod-server -- PORT`

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http_body_util::Full;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;

fn main() -> std::io::Result<()> {
    let port = std::env::args()
        .nth(1)
        .and_then(|port| port.parse::<u16>().ok())
        .unwrap_or(8090);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let listener =
            tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port))).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service =
                    hyper::service::service_fn(|_: http::Request<hyper::body::Incoming>| async {
                        let mut response = http::Response::new(Full::new(Bytes::from_static(
                            b"Hello from hyper! You asked for /\n",
                        )));
                        response.headers_mut().insert(
                            http::header::CONTENT_TYPE,
                            http::HeaderValue::from_static("text/plain; charset=utf-8"),
                        );
                        Ok::<_, Infallible>(response)
                    });
                let _ = http1::Builder::new()
                    .keep_alive(true)
                    .writev(false)
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}
