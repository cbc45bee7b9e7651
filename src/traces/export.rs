//! How finished spans leave the process: a bounded queue (a request never waits on it; a full
//! queue drops the span and counts it), one task that sends them in batches over OTLP/HTTP
//! within a deadline (a batch that fails or runs out of time is counted as dropped), and the
//! sampler.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use opentelemetry::trace::{Link, SpanKind, TraceId};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    Sampler, SamplingDecision, SamplingResult, ShouldSample, Span, SpanData, SpanExporter,
    SpanProcessor,
};
use prometheus::IntCounter;
use tokio::sync::mpsc;

use crate::upstream::HttpsClient;

/// Spans waiting to be sent, at most (the SDK's usual queue size).
pub const QUEUED_SPANS: usize = 2048;
/// Spans in one export, at most.
pub const BATCH_SPANS: usize = 512;
/// How long a batch gathers spans before it is sent, at most.
pub const BATCH_DELAY: Duration = Duration::from_millis(500);
/// Longest one export may take; past it its spans are dropped.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The collector's answer is read up to this size (it is a small protobuf message).
const ANSWER_BYTES: usize = 64 * 1024;

/// The span processor: `on_end` only tries to queue the span.
#[derive(Debug)]
pub struct QueueProcessor {
    tx: mpsc::Sender<SpanData>,
    dropped: IntCounter,
}

impl QueueProcessor {
    /// The processor and the queue's receiving end, for [`send_batches`].
    pub fn new(dropped: IntCounter) -> (QueueProcessor, mpsc::Receiver<SpanData>) {
        let (tx, rx) = mpsc::channel(QUEUED_SPANS);
        (QueueProcessor { tx, dropped }, rx)
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        if self.tx.try_send(span).is_err() {
            self.dropped.inc();
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Sends what the queue holds, in batches, until every sender is gone (the gateway's tracer
/// was dropped); then sends what is left once.
pub async fn send_batches<E: SpanExporter>(
    exporter: E,
    mut rx: mpsc::Receiver<SpanData>,
    dropped: IntCounter,
) {
    let mut batch = Vec::with_capacity(BATCH_SPANS);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        let deadline = tokio::time::sleep(BATCH_DELAY);
        tokio::pin!(deadline);
        while batch.len() < BATCH_SPANS {
            tokio::select! {
                _ = &mut deadline => break,
                span = rx.recv() => match span {
                    Some(span) => batch.push(span),
                    None => break,
                },
            }
        }
        export(&exporter, std::mem::take(&mut batch), &dropped).await;
    }
}

async fn export<E: SpanExporter>(exporter: &E, batch: Vec<SpanData>, dropped: &IntCounter) {
    let n = batch.len() as u64;
    let why = match tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(batch)).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "the collector did not answer in time".to_string(),
    };
    dropped.inc_by(n);
    tracing::warn!(spans = n, error = %why, "trace spans not exported; dropped");
}

/// The collector's HTTP client: the gateway's own pooled hyper/rustls client, each request
/// bounded by [`EXPORT_TIMEOUT`].
#[derive(Debug, Clone)]
pub struct CollectorClient {
    pub client: HttpsClient,
}

/// A failure to reach the collector.
#[derive(Debug, thiserror::Error)]
pub enum CollectorError {
    #[error("the collector did not answer within {0:?}")]
    Timeout(Duration),
    #[error("collector request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("collector answer unreadable: {0}")]
    Answer(String),
}

impl HttpClient for CollectorClient {
    fn send_bytes<'a, 'b>(
        &'a self,
        request: Request<Bytes>,
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Bytes>, HttpError>> + Send + 'b>,
    >
    where
        'a: 'b,
        Self: 'b,
    {
        Box::pin(async move {
            let (parts, body) = request.into_parts();
            let call = async {
                let answer = self
                    .client
                    .request(Request::from_parts(parts, Full::new(body)))
                    .await?;
                let (parts, body) = answer.into_parts();
                let body = Limited::new(body, ANSWER_BYTES)
                    .collect()
                    .await
                    .map_err(|e| CollectorError::Answer(e.to_string()))?
                    .to_bytes();
                Ok::<_, CollectorError>(Response::from_parts(parts, body))
            };
            match tokio::time::timeout(EXPORT_TIMEOUT, call).await {
                Ok(Ok(answer)) => Ok(answer),
                Ok(Err(e)) => Err(Box::new(e) as HttpError),
                Err(_) => Err(Box::new(CollectorError::Timeout(EXPORT_TIMEOUT)) as HttpError),
            }
        })
    }
}

/// Parent-based: a span with a parent follows it (a caller's sampled `traceparent` is traced
/// even at ratio 0, an unsampled one never). A root with links (a merged call) is sampled
/// when any linked caller is; any other root by the ratio.
pub fn sampler(ratio: f64) -> Sampler {
    Sampler::ParentBased(Box::new(Root {
        ratio: Arc::new(Sampler::TraceIdRatioBased(ratio)),
    }))
}

#[derive(Debug, Clone)]
struct Root {
    ratio: Arc<Sampler>,
}

impl ShouldSample for Root {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        if links.is_empty() {
            return self.ratio.should_sample(
                parent_context,
                trace_id,
                name,
                span_kind,
                attributes,
                links,
            );
        }
        let sampled = links.iter().any(|l| l.span_context.is_sampled());
        SamplingResult {
            decision: if sampled {
                SamplingDecision::RecordAndSample
            } else {
                SamplingDecision::Drop
            },
            attributes: Vec::new(),
            trace_state: Default::default(),
        }
    }
}
