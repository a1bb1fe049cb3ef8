//! The open-loop overload: requests leave on time whether or not earlier ones were answered.

use crate::check;
use crate::http::Target;
use crate::malformed::Bad;
use crate::memory;
use crate::reference::Reference;
use crate::settings::Settings;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Rates and request counts: good requests at the factor times saturation, plus one malformed
/// for every two good ones (a third of all).
pub struct Plan {
    pub good_rate: f64,
    pub total_rate: f64,
    /// Requests sent during the warm-up.
    pub n_warm: usize,
    /// All requests, warm-up included.
    pub n: usize,
}

impl Plan {
    pub fn new(settings: &Settings, saturation: f64) -> Self {
        let good_rate = settings.factor * saturation;
        let total_rate = good_rate * 1.5;
        let n_warm = (settings.warmup_secs * total_rate).round() as usize;
        let n = n_warm + (settings.secs * total_rate).round() as usize;
        Plan {
            good_rate,
            total_rate,
            n_warm,
            n,
        }
    }
}

/// Everything a request of the schedule needs to be sent and checked.
pub struct Load {
    pub target: Target,
    pub photo: Arc<Vec<u8>>,
    pub bads: Vec<Bad>,
    pub reference: Reference,
}

#[derive(Debug)]
pub struct Outcome {
    /// Sent during the warm-up (not counted in the figures, but checked).
    pub warmup: bool,
    /// `None` for a good request, else the malformed kind's index.
    pub bad: Option<usize>,
    pub status: u16,
    pub latency: Duration,
    /// What was wrong with the answer, if anything.
    pub violation: Option<String>,
}

/// Every request's outcome, in the order sent, and when the measured window began.
pub struct Run {
    pub outcomes: Vec<Outcome>,
    pub measured_from: Instant,
}

/// Sends request i at i / total_rate; every third is malformed, cycling through the kinds.
/// Samples memory as the requests leave, and returns once every answer has come.
pub async fn run(plan: &Plan, load: &Arc<Load>, memory: &mut memory::Sampler) -> Run {
    let mut measured_from = Instant::now();
    let mut handles = Vec::with_capacity(plan.n);
    let t0 = Instant::now();
    for i in 0..plan.n {
        let at = t0 + Duration::from_secs_f64(i as f64 / plan.total_rate);
        tokio::time::sleep_until(at.into()).await;
        memory.at_request(i);
        if i == plan.n_warm {
            measured_from = Instant::now();
        }
        let bad = (i % 3 == 2).then_some((i / 3) % load.bads.len());
        handles.push(tokio::spawn(send(load.clone(), bad, i < plan.n_warm)));
    }
    let mut outcomes = Vec::with_capacity(plan.n);
    for h in handles {
        outcomes.push(h.await.expect("a request task does not panic"));
    }
    Run {
        outcomes,
        measured_from,
    }
}

/// Sends one request (the photo, or malformed kind `bad`) and checks its answer.
async fn send(load: Arc<Load>, bad: Option<usize>, warmup: bool) -> Outcome {
    let sent = Instant::now();
    let result = match bad {
        None => load.target.explain(&load.photo).await,
        Some(k) => {
            let b = &load.bads[k];
            load.target
                .post(b.path, b.content_type, b.body.clone())
                .await
        }
    };
    let latency = sent.elapsed();
    let (status, violation) = match result {
        Err(e) => (0, Some(e)),
        Ok(answer) => (
            answer.status,
            match bad {
                None => check::good(&load.reference, &answer),
                Some(k) => check::malformed(&load.bads[k], &answer),
            },
        ),
    };
    Outcome {
        warmup,
        bad,
        status,
        latency,
        violation,
    }
}
