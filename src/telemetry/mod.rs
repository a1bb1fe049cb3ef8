//! OpenTelemetry: each request's trace exported over OTLP, a client's W3C trace context
//! continued inside, and the trace ids in the log lines, the answers (`traceresponse`) and the
//! latency exemplars.
//!
//! Configured by the standard variables only, read by the SDK: `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` or
//! `http/protobuf`, the default), `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`/`_ARG` and
//! `OTEL_BSP_*` (each `_TRACES_` variant too). Without an endpoint (or with
//! `OTEL_TRACES_EXPORTER=none` or `OTEL_SDK_DISABLED=true`) nothing is traced: no span reaches
//! any subscriber, so the spans in the code cost a relaxed load each.

mod export;
mod logs;

use crate::config::LogFormat;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::fmt::Write;
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use export::Protocol;

/// The spans' fate, once tracing is on.
static COUNTS: OnceLock<Arc<export::Counts>> = OnceLock::new();

/// Whether traces are exported by this process.
pub fn enabled() -> bool {
    COUNTS.get().is_some()
}

/// Where traces go, if anywhere: the protocol, or `None` when the environment names no
/// endpoint or turns tracing off.
pub fn configured(var: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Protocol>> {
    let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
    if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match set("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => anyhow::bail!(
            "OTEL_TRACES_EXPORTER is {other:?}: traces go out over OTLP (\"otlp\") or not at all (\"none\")"
        ),
    }
    if set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_none()
        && set("OTEL_EXPORTER_OTLP_ENDPOINT").is_none()
    {
        return Ok(None);
    }
    Protocol::from_env(set).map(Some)
}

/// The installed logging and tracing; [`Telemetry::shutdown`] sends what is still queued.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    /// A gRPC exporter's connection runs here, apart from the server's runtime, so that the
    /// last spans still go out while the server shuts down.
    runtime: Option<tokio::runtime::Runtime>,
}

impl Telemetry {
    /// Installs the process's subscriber: log lines in `format` on standard error (filtered
    /// by `RUST_LOG`, `info` by default) and, when `traces` names a protocol, this crate's
    /// spans exported over OTLP.
    pub fn install(format: LogFormat, traces: Option<Protocol>) -> anyhow::Result<Self> {
        let (dispatch, telemetry) = Self::build(format, traces)?;
        dispatch.try_init()?;
        if let Some(protocol) = traces {
            tracing::info!(?protocol, "exporting traces over OTLP");
        }
        Ok(telemetry)
    }

    /// The subscriber [`Telemetry::install`] installs, not yet installed (benches/tracing.rs
    /// runs the same with and without traces in one process).
    pub fn build(
        format: LogFormat,
        traces: Option<Protocol>,
    ) -> anyhow::Result<(tracing::Dispatch, Self)> {
        let filter =
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
        // Log lines are events; spans are for traces only (a log line names its trace).
        let logs = logs::layer(format).with_filter(filter.and(filter_fn(|m| m.is_event())));
        let Some(protocol) = traces else {
            let telemetry = Self {
                provider: None,
                runtime: None,
            };
            return Ok((tracing_subscriber::registry().with(logs).into(), telemetry));
        };
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp")
            .enable_all()
            .build()?;
        let counts = Arc::new(export::Counts::default());
        let processor = export::processor(protocol, &runtime, counts.clone())?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_resource(resource())
            .build();
        let tracer = provider.tracer("gradcam-serve");
        let traces = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_target(false)
            .with_level(false)
            .with_tracked_inactivity(false)
            .with_filter(Targets::new().with_target("gradcam_serve", tracing::Level::INFO));
        let dispatch = tracing_subscriber::registry()
            .with(logs)
            .with(traces)
            .into();
        let _ = COUNTS.set(counts);
        let telemetry = Self {
            provider: Some(provider),
            runtime: Some(runtime),
        };
        Ok((dispatch, telemetry))
    }

    /// Exports every span finished so far, now.
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }

    /// Exports the spans still queued (within the exporter's timeout) and stops.
    pub fn shutdown(mut self) {
        if let Some(p) = self.provider.take()
            && let Err(e) = p.shutdown()
        {
            tracing::warn!(error = %e, "the last traces were not all exported");
        }
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

/// The resource: the SDK's (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), named
/// `gradcam-serve` where the environment names no service, with this version.
fn resource() -> opentelemetry_sdk::Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES").is_ok_and(|v| {
            v.split(',')
                .any(|kv| kv.trim().starts_with("service.name="))
        });
    let builder = opentelemetry_sdk::Resource::builder().with_attribute(
        opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
    );
    if named {
        builder.build()
    } else {
        builder.with_service_name("gradcam-serve").build()
    }
}

/// A span's trace as W3C trace context names it: the trace id, the span id and whether it is
/// sampled. `None` when nothing is traced.
pub fn ids(span: &tracing::Span) -> Option<(String, String, bool)> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| {
        (
            sc.trace_id().to_string(),
            sc.span_id().to_string(),
            sc.is_sampled(),
        )
    })
}

/// The id of the sampled trace current on this thread, if any: a latency's exemplar.
pub fn current_sampled_trace() -> Option<String> {
    if !enabled() {
        return None;
    }
    opentelemetry::Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        (sc.is_valid() && sc.is_sampled()).then(|| sc.trace_id().to_string())
    })
}

/// The W3C `traceresponse` value for a span (`00-TRACE-SPAN-FLAGS`), when traced.
pub fn traceresponse(span: &tracing::Span) -> Option<String> {
    ids(span).map(|(trace, id, sampled)| format!("00-{trace}-{id}-{:02x}", u8::from(sampled)))
}

/// Continues a client's trace: `span`'s parent becomes the context that the W3C
/// `traceparent` and `tracestate` headers carry, if valid.
pub fn continue_from(span: &tracing::Span, headers: &axum::http::HeaderMap) {
    if !enabled() {
        return;
    }
    use opentelemetry::propagation::TextMapPropagator;
    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new()
        .extract(&opentelemetry_http::HeaderExtractor(headers));
    if cx.span().span_context().is_valid() {
        let _ = span.set_parent(cx);
    }
}

/// The spans' fate in the Prometheus exposition: exported, and dropped by reason.
pub fn render_metrics(out: &mut String) {
    let zero = export::Counts::default();
    let counts = COUNTS.get().map_or(&zero, |c| &**c);
    let _ = writeln!(
        out,
        "# HELP gradcam_trace_spans_exported_total Spans the OTLP collector took.\n\
         # TYPE gradcam_trace_spans_exported_total counter\n\
         gradcam_trace_spans_exported_total {}",
        counts.exported.load(Ordering::Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP gradcam_trace_spans_dropped_total Spans lost: the export queue was full \
         (queue_full) or the collector did not take their batch (export_failed).\n\
         # TYPE gradcam_trace_spans_dropped_total counter\n\
         gradcam_trace_spans_dropped_total{{reason=\"queue_full\"}} {}\n\
         gradcam_trace_spans_dropped_total{{reason=\"export_failed\"}} {}",
        counts.queue_full.load(Ordering::Relaxed),
        counts.export_failed.load(Ordering::Relaxed)
    );
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An environment of `pairs`, as the functions that read variables take it.
    pub(crate) fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn traces_need_an_endpoint_and_can_be_turned_off() {
        let c = |pairs: &[(&str, &str)]| configured(env(pairs)).ok().flatten();
        assert_eq!(c(&[]), None);
        assert_eq!(c(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), None);
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert_eq!(c(&[endpoint]), Some(Protocol::HttpProtobuf));
        assert_eq!(
            c(&[(
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://collector:4318/v1/traces"
            )]),
            Some(Protocol::HttpProtobuf)
        );
        assert_eq!(c(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]), None);
        assert_eq!(c(&[endpoint, ("OTEL_SDK_DISABLED", "TRUE")]), None);
        assert_eq!(
            c(&[endpoint, ("OTEL_TRACES_EXPORTER", "otlp")]),
            Some(Protocol::HttpProtobuf)
        );
        let e = configured(env(&[endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")]))
            .expect_err("only OTLP is spoken");
        assert!(e.to_string().contains("\"otlp\""), "{e}");
    }

    #[test]
    fn nothing_is_named_when_nothing_is_traced() {
        let span = tracing::info_span!("untraced");
        assert_eq!(ids(&span), None);
        assert_eq!(traceresponse(&span), None);
        let mut text = String::new();
        render_metrics(&mut text);
        assert!(
            text.contains("gradcam_trace_spans_dropped_total{reason=\"queue_full\"} 0"),
            "{text}"
        );
    }
}
