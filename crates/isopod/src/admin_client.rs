//! The command line's client of the admin API (`isopod deploy`, `apps`,
//! `pool`, `rm`): one request per command, over HTTP/1.1, with the bearer
//! token; errors as one line a person can act on.

use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Where the admin API is and how to authenticate to it.
pub(crate) struct AdminClient {
    /// `host:port`, from the admin URL.
    authority: String,
    /// The URL as given, for messages.
    url: String,
    token: String,
}

impl AdminClient {
    /// A client of the admin API at `url` (`http://HOST:PORT`).
    pub(crate) fn new(url: &str, token: Option<String>) -> anyhow::Result<AdminClient> {
        let authority = url
            .strip_prefix("http://")
            .ok_or_else(|| anyhow!("the admin URL must start with http:// (got '{url}')"))?
            .trim_end_matches('/')
            .to_string();
        if authority.is_empty() || authority.contains('/') {
            bail!("the admin URL must be http://HOST:PORT (got '{url}')");
        }
        let token = token.filter(|token| !token.is_empty()).ok_or_else(|| {
            anyhow!("no admin token: pass --admin-token or set ISOPOD_ADMIN_TOKEN")
        })?;
        Ok(AdminClient {
            authority,
            url: url.to_string(),
            token,
        })
    }

    /// Sends one request and returns the answer's JSON body; an answer
    /// other than 2xx is an error naming the status and the API's reason.
    pub(crate) async fn call(
        &self,
        method: http::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> anyhow::Result<Value> {
        let response = self.send(method, path, body).await?;
        let status = response.status();
        let text = response.into_body().collect().await?.to_bytes();
        let answer: Value = serde_json::from_slice(&text)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&text).into_owned()));
        if status.is_success() {
            return Ok(answer);
        }
        Err(refusal(status, &answer))
    }

    /// Sends a GET and hands each line of the answer to `line` as it
    /// arrives (for a response that stays open, `logs --follow`).
    pub(crate) async fn lines(&self, path: &str, mut line: impl FnMut(&str)) -> anyhow::Result<()> {
        let response = self.send(http::Method::GET, path, None).await?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let text = body.collect().await?.to_bytes();
            let answer: Value = serde_json::from_slice(&text)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&text).into_owned()));
            return Err(refusal(status, &answer));
        }
        let mut pending = Vec::new();
        while let Some(frame) = body.frame().await {
            let Ok(data) = frame?.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let text: Vec<u8> = pending.drain(..=end).collect();
                line(String::from_utf8_lossy(&text[..end]).trim_end());
            }
        }
        Ok(())
    }

    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<(&str, Vec<u8>)>,
    ) -> anyhow::Result<http::Response<hyper::body::Incoming>> {
        let stream = tokio::net::TcpStream::connect(&self.authority)
            .await
            .map_err(|error| anyhow!("cannot reach the admin API at {}: {error}", self.url))?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .with_context(|| format!("talking to the admin API at {}", self.url))?;
        tokio::spawn(connection);
        let (content_type, bytes) = body.unwrap_or(("text/plain", Vec::new()));
        let request = http::Request::builder()
            .method(method)
            .uri(path)
            .header("host", &self.authority)
            .header("authorization", format!("Bearer {}", self.token))
            .header("content-type", content_type)
            .body(Full::new(Bytes::from(bytes)))?;
        sender
            .send_request(request)
            .await
            .with_context(|| format!("talking to the admin API at {}", self.url))
    }
}

/// An answer other than 2xx as one line: the status and the API's reason
/// (a bundle's error and its `at file:line:column` included).
fn refusal(status: http::StatusCode, answer: &Value) -> anyhow::Error {
    let reason = answer["error"]
        .as_str()
        .map(|reason| {
            reason
                .lines()
                .map(str::trim)
                .filter(|line| !line.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_else(|| answer.to_string());
    match status.as_u16() {
        401 => anyhow!("the admin API refused the token (401): {reason}"),
        _ => anyhow!("{reason} ({status})"),
    }
}
