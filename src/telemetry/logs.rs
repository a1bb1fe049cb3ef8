//! Log lines on standard error: pretty for a terminal or JSON for a collector, a JSON line
//! naming the trace and span it was written in (`trace_id`, `span_id`) when traces are on.

use crate::config::LogFormat;
use opentelemetry::trace::TraceContextExt;
use std::fmt;
use tracing::{Event, Subscriber};
use tracing_subscriber::Layer;
use tracing_subscriber::fmt::format::{Format, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// The log layer for `format`; colour only on a terminal (a redirected log is plain text).
pub fn layer<S>(format: LogFormat) -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    let layer = tracing_subscriber::fmt::layer()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Pretty => layer.boxed(),
        LogFormat::Json => layer
            .fmt_fields(JsonFields::new())
            .event_format(WithTraceIds(Format::default().json()))
            .boxed(),
    }
}

/// A JSON line with the ids of the trace span it was written in (the span the OpenTelemetry
/// layer made current on entering it), if any.
struct WithTraceIds(Format<Json>);

impl<S, N> FormatEvent<S, N> for WithTraceIds
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let ids = opentelemetry::Context::map_current(|cx| {
            let sc = cx.span().span_context().clone();
            sc.is_valid().then(|| (sc.trace_id(), sc.span_id()))
        });
        let Some((trace, span)) = ids else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.trim_end().strip_suffix('}') {
            Some(head) => writeln!(
                writer,
                "{head},\"trace_id\":\"{trace}\",\"span_id\":\"{span}\"}}"
            ),
            None => writer.write_str(&line),
        }
    }
}
