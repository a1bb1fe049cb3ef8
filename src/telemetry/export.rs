//! The way out of the process: an OTLP exporter (gRPC or HTTP/protobuf) behind the SDK's batch
//! processor, with a bound on the spans held and every span that is lost counted.
//!
//! The batch processor exports on a thread of its own, so a slow or unreachable collector never
//! delays a request: spans wait in a queue of `OTEL_BSP_MAX_QUEUE_SIZE` (2048), and when it is
//! full a finished span is dropped at once and counted (`gradcam_trace_spans_dropped_total`
//! with `reason="queue_full"`); a batch the collector did not take is counted with
//! `reason="export_failed"`.

use opentelemetry::Context;
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Span, SpanData, SpanExporter, SpanProcessor,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// What happened to the spans this process finished.
#[derive(Debug, Default)]
pub struct Counts {
    /// Handed to the collector, which took them.
    pub exported: AtomicU64,
    /// Dropped because the queue was full (the collector is slow or unreachable).
    pub queue_full: AtomicU64,
    /// In a batch the collector refused or never answered.
    pub export_failed: AtomicU64,
    /// Waiting in the queue or being exported now.
    pub held: AtomicU64,
}

/// The two transports of OTLP we speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Grpc,
    HttpProtobuf,
}

impl Protocol {
    /// `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`, else `OTEL_EXPORTER_OTLP_PROTOCOL`, else the
    /// specification's default, `http/protobuf`.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let named = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
        match named.as_deref().map(str::trim) {
            None | Some("http/protobuf") => Ok(Self::HttpProtobuf),
            Some("grpc") => Ok(Self::Grpc),
            Some(other) => anyhow::bail!(
                "OTEL_EXPORTER_OTLP_PROTOCOL is {other:?}: the protocols served are \"grpc\" and \"http/protobuf\""
            ),
        }
    }
}

/// The exporter's timeout: `OTEL_EXPORTER_OTLP_TRACES_TIMEOUT`, else `OTEL_EXPORTER_OTLP_TIMEOUT`
/// (milliseconds), else 10 s.
fn timeout(var: impl Fn(&str) -> Option<String>) -> Duration {
    var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        .or_else(|| var("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .and_then(|v| v.trim().parse().ok())
        .map_or(Duration::from_secs(10), Duration::from_millis)
}

/// The queue's bound, as the batch processor reads it (`OTEL_BSP_MAX_QUEUE_SIZE`, 2048).
fn queue_size(var: impl Fn(&str) -> Option<String>) -> u64 {
    var("OTEL_BSP_MAX_QUEUE_SIZE")
        .and_then(|v| v.trim().parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(2048)
}

/// The span processor for `protocol`, counting into `counts`. A gRPC exporter's connection
/// lives on `runtime`, which must outlive it.
pub fn processor(
    protocol: Protocol,
    runtime: &tokio::runtime::Runtime,
    counts: Arc<Counts>,
) -> anyhow::Result<Counting> {
    let var = |name: &str| std::env::var(name).ok().filter(|v| !v.trim().is_empty());
    let timeout = timeout(var);
    let exporter = match protocol {
        Protocol::Grpc => {
            // The channel is ours so that connecting is bounded by the timeout too (the
            // exporter's own bounds only the call): a collector that drops packets costs an
            // export the timeout, not the system's TCP timeout.
            let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
                .unwrap_or_else(|| "http://localhost:4317".into());
            let _entered = runtime.enter();
            let channel = tonic::transport::Endpoint::from_shared(endpoint.trim().to_string())
                .map_err(|e| anyhow::anyhow!("the OTLP endpoint {endpoint:?}: {e}"))?
                .timeout(timeout)
                .connect_timeout(timeout)
                .connect_lazy();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_channel(channel)
                .with_timeout(timeout)
                .build()?
        }
        Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_timeout(timeout)
            .with_http_client(Blocking(
                reqwest::blocking::Client::builder()
                    .timeout(timeout)
                    .build()?,
            ))
            .build()?,
    };
    let exporter = CountingExporter {
        inner: exporter,
        counts: counts.clone(),
    };
    let limit = queue_size(var);
    let config = BatchConfigBuilder::default()
        .with_max_queue_size(limit as usize)
        .build();
    Ok(Counting {
        inner: BatchSpanProcessor::builder(exporter)
            .with_batch_config(config)
            .build(),
        counts,
        limit,
    })
}

/// The batch processor, refusing (and counting) a span when the spans held reach the queue's
/// bound: what the processor would drop silently is counted here.
#[derive(Debug)]
pub struct Counting {
    inner: BatchSpanProcessor,
    counts: Arc<Counts>,
    limit: u64,
}

impl SpanProcessor for Counting {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        let held = &self.counts.held;
        if held
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < self.limit).then_some(n + 1)
            })
            .is_err()
        {
            self.counts.queue_full.fetch_add(1, Ordering::Relaxed);
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what each batch became and releasing its spans from the count
/// held.
#[derive(Debug)]
struct CountingExporter {
    inner: opentelemetry_otlp::SpanExporter,
    counts: Arc<Counts>,
}

impl SpanExporter for CountingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut release = Release {
            counts: &self.counts,
            spans: batch.len() as u64,
            exported: false,
        };
        let result = self.inner.export(batch).await;
        release.exported = result.is_ok();
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// A batch's spans leave the count held however its export ends (an exporter that panics
/// included), counted as exported or failed.
struct Release<'a> {
    counts: &'a Counts,
    spans: u64,
    exported: bool,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        let outcome = if self.exported {
            &self.counts.exported
        } else {
            &self.counts.export_failed
        };
        outcome.fetch_add(self.spans, Ordering::Relaxed);
        self.counts.held.fetch_sub(self.spans, Ordering::SeqCst);
    }
}

/// OTLP/HTTP over a blocking client: the batch processor's thread has no async runtime, and a
/// blocking client brings its own.
#[derive(Debug)]
struct Blocking(reqwest::blocking::Client);

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for Blocking {
    async fn send_bytes(
        &self,
        request: axum::http::Request<bytes::Bytes>,
    ) -> Result<axum::http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let response = self
            .0
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .body(Vec::from(body))
            .send()?;
        let mut answer = axum::http::Response::builder().status(response.status());
        if let Some(headers) = answer.headers_mut() {
            *headers = response.headers().clone();
        }
        Ok(answer.body(response.bytes()?)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::telemetry::tests::env;

    #[test]
    fn the_traces_protocol_wins_over_the_general_one() {
        let p = |pairs: &[(&str, &str)]| Protocol::from_env(env(pairs)).ok();
        assert_eq!(p(&[]), Some(Protocol::HttpProtobuf));
        assert_eq!(
            p(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]),
            Some(Protocol::Grpc)
        );
        assert_eq!(
            p(&[
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf")
            ]),
            Some(Protocol::HttpProtobuf)
        );
        let e = Protocol::from_env(env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]))
            .expect_err("JSON is not spoken");
        assert!(
            e.to_string().contains("\"grpc\" and \"http/protobuf\""),
            "{e}"
        );
    }

    #[test]
    fn timeouts_and_queue_bound_follow_the_standard_variables() {
        assert_eq!(timeout(env(&[])), Duration::from_secs(10));
        assert_eq!(
            timeout(env(&[
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "500"),
                ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "250")
            ])),
            Duration::from_millis(250)
        );
        assert_eq!(queue_size(env(&[])), 2048);
        assert_eq!(queue_size(env(&[("OTEL_BSP_MAX_QUEUE_SIZE", "64")])), 64);
        assert_eq!(queue_size(env(&[("OTEL_BSP_MAX_QUEUE_SIZE", "0")])), 2048);
    }
}
