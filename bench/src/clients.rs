//! Lean clients: HTTP/1.1 and h2c over hyper-util; gRPC as a small unary client straight
//! over `h2` ([`GrpcH2`]), and the generated Dapr gRPC client over a hyper-util HTTP/2-only
//! client for comparison.
//!
//! The generated client deliberately avoids tonic's `transport::Channel`: that one puts a
//! buffer task between the caller and the connection, an extra task hop per call that would
//! be counted against the sidecar.

use bytes::Bytes;
use dapr::dapr::proto::runtime::v1::dapr_client::DaprClient;
use http::{Method, Request};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// HTTP version of a client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Http {
    /// HTTP/1.1 keep-alive, one connection per request in flight.
    H1,
    /// HTTP/2 with prior knowledge (h2c), one multiplexed connection.
    H2c,
}

/// A pooled HTTP client.
pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// The hyper-util client under the gRPC client.
pub type GrpcTransport = Client<HttpConnector, tonic::body::Body>;

/// The Dapr API gRPC client.
pub type Grpc = DaprClient<GrpcTransport>;

fn connector() -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c
}

/// A new HTTP client of `version`.
pub fn http(version: Http) -> HttpClient {
    let mut b = Client::builder(TokioExecutor::new());
    if version == Http::H2c {
        b.http2_only(true);
    }
    b.build(connector())
}

/// A gRPC client of the Dapr API at `127.0.0.1:port`.
pub fn grpc(port: u16) -> Grpc {
    let transport: GrpcTransport = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector());
    let origin = format!("http://127.0.0.1:{port}")
        .parse()
        .expect("origin URI");
    DaprClient::with_origin(transport, origin)
}

/// One HTTP exchange: fails unless the status is `expect`; returns the body.
pub async fn call(
    client: &HttpClient,
    method: Method,
    uri: &http::Uri,
    body: Bytes,
    headers: &[(&'static str, &'static str)],
    expect: u16,
) -> Result<Bytes, String> {
    let mut req = Request::builder().method(method).uri(uri.clone());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(Full::new(body)).map_err(|e| e.to_string())?;
    let resp = client.request(req).await.map_err(|e| format!("{e:?}"))?;
    let status = resp.status().as_u16();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    if status != expect {
        return Err(format!(
            "{uri}: status {status} (expected {expect}): {}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ));
    }
    Ok(body)
}

/// A URI on `127.0.0.1:port`.
pub fn uri(port: u16, path: &str) -> http::Uri {
    format!("http://127.0.0.1:{port}{path}")
        .parse()
        .expect("valid URI")
}

/// A unary gRPC client straight over one `h2` connection: no per-call task, no pool
/// check-out, no body pipe. It measures what the sidecar adds without a heavy client in the
/// way (`tonic` over hyper spawns a task per call and pipes the request body through it).
#[derive(Clone)]
pub struct GrpcH2 {
    port: u16,
    conn: std::sync::Arc<tokio::sync::OnceCell<h2::client::SendRequest<Bytes>>>,
}

impl GrpcH2 {
    /// A client of `127.0.0.1:port`; it connects on the first call.
    pub fn new(port: u16) -> Self {
        Self {
            port,
            conn: Default::default(),
        }
    }

    async fn sender(&self) -> Result<h2::client::SendRequest<Bytes>, String> {
        let port = self.port;
        let send = self
            .conn
            .get_or_try_init(|| async move {
                let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
                    .await
                    .map_err(|e| format!("connect 127.0.0.1:{port}: {e}"))?;
                tcp.set_nodelay(true).map_err(|e| e.to_string())?;
                let (send, conn) = h2::client::handshake(tcp)
                    .await
                    .map_err(|e| format!("HTTP/2 handshake: {e}"))?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                Ok::<_, String>(send)
            })
            .await?;
        send.clone().ready().await.map_err(|e| e.to_string())
    }

    /// Calls `path` (`/package.Service/Method`) with `msg`; returns the answer message.
    pub async fn unary<Req: prost::Message, Resp: prost::Message + Default>(
        &self,
        path: &str,
        msg: &Req,
    ) -> Result<Resp, String> {
        let mut send = self.sender().await?;
        let len = msg.encoded_len();
        let mut frame = bytes::BytesMut::with_capacity(5 + len);
        bytes::BufMut::put_u8(&mut frame, 0);
        bytes::BufMut::put_u32(&mut frame, len as u32);
        msg.encode(&mut frame).map_err(|e| e.to_string())?;
        let req = Request::builder()
            .method(Method::POST)
            .uri(format!("http://127.0.0.1:{}{path}", self.port))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .body(())
            .map_err(|e| e.to_string())?;
        let (answer, mut stream) = send.send_request(req, false).map_err(|e| e.to_string())?;
        stream
            .send_data(frame.freeze(), true)
            .map_err(|e| e.to_string())?;
        let answer = answer.await.map_err(|e| e.to_string())?;
        if let Some(status) = answer.headers().get("grpc-status") {
            // Trailers-only answer: an error (a success carries a message).
            return Err(format!("{path}: grpc-status {status:?}"));
        }
        let mut body = answer.into_body();
        let mut data = bytes::BytesMut::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(|e| e.to_string())?;
            let _ = body.flow_control().release_capacity(chunk.len());
            data.extend_from_slice(&chunk);
        }
        let trailers = body.trailers().await.map_err(|e| e.to_string())?;
        let status = trailers.as_ref().and_then(|t| t.get("grpc-status"));
        if status.map(|s| s.as_bytes()) != Some(b"0") {
            return Err(format!("{path}: grpc-status {status:?}"));
        }
        if data.len() < 5 || data[0] != 0 {
            return Err(format!(
                "{path}: malformed gRPC message ({} bytes)",
                data.len()
            ));
        }
        Resp::decode(&data[5..]).map_err(|e| format!("{path}: {e}"))
    }
}
