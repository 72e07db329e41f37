//! `init()`: OTLP/HTTP export of traces and metrics (feature `otel-otlp`).

use opentelemetry_http::{Bytes, HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::io::{Read as _, Write as _};
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

/// Why [`init`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitError {
    /// The OTLP exporter could not be built (e.g. a malformed endpoint).
    #[error("cannot build the OTLP exporter: {0}")]
    Exporter(String),
    /// A global `tracing` subscriber is already installed.
    #[error("a global tracing subscriber is already installed: {0}")]
    Subscriber(String),
}

/// Flushes and shuts the exporters down when dropped: keep it alive in `main`.
#[derive(Debug)]
#[must_use = "dropping the guard flushes and stops the exporters"]
pub struct TelemetryGuard {
    tracer: SdkTracerProvider,
    meter: SdkMeterProvider,
}

impl TelemetryGuard {
    /// Exports what is buffered now.
    pub fn flush(&self) {
        let _ = self.tracer.force_flush();
        let _ = self.meter.force_flush();
    }
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        self.flush();
        let _ = self.tracer.shutdown();
        let _ = self.meter.shutdown();
    }
}

/// Installs OpenTelemetry export for traces and metrics, and a global `tracing` subscriber
/// (`RUST_LOG` filter, default `info`; human-readable logs on stderr; spans to OpenTelemetry).
///
/// Reads the standard variables: `OTEL_EXPORTER_OTLP_ENDPOINT` (default
/// `http://localhost:4318`; OTLP over HTTP with protobuf, plain `http://` only: dtx ships no
/// TLS), `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `..._METRICS_ENDPOINT`, `OTEL_SERVICE_NAME`,
/// `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default
/// `parentbased_always_on`). Spans are exported in batches from a background thread.
///
/// ```no_run
/// fn main() -> Result<(), Box<dyn std::error::Error>> {
///     let _telemetry = dtx::telemetry::init()?;
///     // ... run the service; dropping the guard flushes the last spans and metrics.
///     Ok(())
/// }
/// ```
pub fn init() -> Result<TelemetryGuard, InitError> {
    let resource = Resource::builder().build();
    let spans = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(PlainHttpClient::default())
        .build()
        .map_err(|e| InitError::Exporter(e.to_string()))?;
    let metrics = opentelemetry_otlp::MetricExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .with_http_client(PlainHttpClient::default())
        .build()
        .map_err(|e| InitError::Exporter(e.to_string()))?;
    let tracer = SdkTracerProvider::builder()
        .with_resource(resource.clone())
        .with_batch_exporter(spans)
        .build();
    let meter = SdkMeterProvider::builder()
        .with_resource(resource)
        .with_reader(PeriodicReader::builder(metrics).build())
        .build();
    let layer = {
        use opentelemetry::trace::TracerProvider as _;
        tracing_opentelemetry::layer().with_tracer(tracer.tracer("dtx"))
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::registry()
        .with(layer)
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .try_init()
        .map_err(|e| InitError::Subscriber(e.to_string()))?;
    opentelemetry::global::set_tracer_provider(tracer.clone());
    opentelemetry::global::set_meter_provider(meter.clone());
    Ok(TelemetryGuard { tracer, meter })
}

/// A minimal blocking HTTP/1.1 client for OTLP export over plain TCP: the exporters call it
/// from their own background threads, so it needs no async runtime and no TLS stack.
#[derive(Debug, Clone)]
struct PlainHttpClient {
    timeout: Duration,
}

impl Default for PlainHttpClient {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(10),
        }
    }
}

#[async_trait::async_trait]
impl HttpClient for PlainHttpClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let uri = request.uri();
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "dtx's OTLP exporter speaks plain HTTP only; `{uri}` needs TLS (use an http:// endpoint, e.g. a local collector)"
            )
            .into());
        }
        let host = uri.host().ok_or("the OTLP endpoint has no host")?;
        let port = uri.port_u16().unwrap_or(80);
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let address = std::net::ToSocketAddrs::to_socket_addrs(&(host, port))?
            .next()
            .ok_or("the OTLP endpoint's host does not resolve")?;
        let mut stream = std::net::TcpStream::connect_timeout(&address, self.timeout)?;
        stream.set_read_timeout(Some(self.timeout))?;
        stream.set_write_timeout(Some(self.timeout))?;
        let mut head = format!(
            "{} {path} HTTP/1.1\r\nhost: {host}:{port}\r\nconnection: close\r\ncontent-length: {}\r\n",
            request.method(),
            request.body().len()
        );
        for (name, value) in request.headers() {
            if name != "host" && name != "content-length" && name != "connection" {
                head.push_str(name.as_str());
                head.push_str(": ");
                head.push_str(value.to_str()?);
                head.push_str("\r\n");
            }
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes())?;
        stream.write_all(request.body())?;
        let mut raw = Vec::new();
        stream
            .take(4 * 1024 * 1024 + 64 * 1024)
            .read_to_end(&mut raw)?;
        parse_response(&raw)
    }
}

/// Parses a `connection: close` HTTP/1.1 response (status and body; headers are dropped).
fn parse_response(raw: &[u8]) -> Result<Response<Bytes>, HttpError> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("malformed HTTP response from the OTLP endpoint")?;
    let head = std::str::from_utf8(&raw[..end])?;
    let status: u16 = head
        .split_whitespace()
        .nth(1)
        .ok_or("no status in the OTLP endpoint's response")?
        .parse()?;
    Ok(Response::builder()
        .status(status)
        .body(Bytes::copy_from_slice(&raw[end + 4..]))?)
}
