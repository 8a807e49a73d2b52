//! Runs one claimed job's handler and turns its result into an outcome.

use super::*;

impl Fetcher {
    pub(super) fn run_job(
        &self,
        job: Claimed,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let handler = self.handlers.get(&job.kind).cloned();
        let m = &METRICS;
        m.jobs
            .with_label_values(&[&job.queue, &job.kind, "started"])
            .inc();
        let waited = (chrono::Utc::now() - job.run_at)
            .to_std()
            .unwrap_or_default();
        m.job_pickup_seconds
            .with_label_values(&[&job.queue])
            .observe(waited.as_secs_f64());
        let done = self.done.clone();
        let backoff = self.backoff;
        let span = info_span!(
            "job",
            otel.name = %format_args!("job {}", job.kind),
            job_id = %job.id,
            queue = %job.queue,
            kind = %job.kind,
            attempt = job.attempt,
            subject = tracing::field::Empty,
        );
        // The run continues the trace of the request (or cycle) that
        // enqueued the job, after a span for its time in the queue.
        dashtam_telemetry::traces::continue_job_trace(
            &span,
            job.trace_parent.as_deref(),
            job.run_at,
            job.started_at,
            &job.queue,
            job.attempt,
        );
        let ctx = JobContext {
            id: job.id,
            queue: job.queue,
            kind: job.kind,
            payload: job.payload,
            attempt: job.attempt,
            max_attempts: job.max_attempts,
            owner: job.owner,
            throttle_key: job.throttle_key,
            worker_id: self.worker_id,
            started_at: job.started_at,
            pool: self.pool.clone(),
        };
        async move {
            let started = std::time::Instant::now();
            let result = match handler {
                Some(h) => h.handle(&ctx).await,
                None => Err(JobError::permanent(format!(
                    "no handler for job kind {:?}",
                    ctx.kind
                ))),
            };
            let outcome = match result {
                Ok(()) => Outcome::Succeeded,
                Err(JobError::Snooze { after, reason }) => {
                    debug!(reason = %reason, ?after, "job snoozed");
                    let until =
                        chrono::Utc::now() + chrono::Duration::from_std(after).unwrap_or_default();
                    Outcome::Snoozed {
                        delay: after,
                        waiting: serde_json::json!({ "reason": reason, "until": until }),
                    }
                }
                Err(JobError::Cancelled) => Outcome::Failed {
                    state: JobState::Cancelled,
                    delay: Duration::ZERO,
                    message: "cancelled on request".into(),
                },
                Err(JobError::Permanent { message }) => {
                    warn!(error = %message, "job failed permanently");
                    Outcome::Failed {
                        state: JobState::Failed,
                        delay: Duration::ZERO,
                        message,
                    }
                }
                Err(JobError::Retry { message, after }) => {
                    if ctx.attempt >= ctx.max_attempts {
                        warn!(error = %message, "job failed on its last attempt");
                        Outcome::Failed {
                            state: JobState::Failed,
                            delay: Duration::ZERO,
                            message,
                        }
                    } else {
                        let delay = after.unwrap_or_else(|| backoff.delay(ctx.attempt));
                        debug!(error = %message, ?delay, "job will be retried");
                        Outcome::Failed {
                            state: JobState::Retryable,
                            delay,
                            message,
                        }
                    }
                }
            };
            let event = match &outcome {
                Outcome::Succeeded => "succeeded",
                Outcome::Snoozed { .. } => "snoozed",
                Outcome::Failed {
                    state: JobState::Retryable,
                    ..
                } => "retried",
                Outcome::Failed { state, .. } => state.as_str(),
            };
            METRICS
                .jobs
                .with_label_values(&[&ctx.queue, &ctx.kind, event])
                .inc();
            METRICS
                .job_duration_seconds
                .with_label_values(&[&ctx.queue, &ctx.kind, event])
                .observe(started.elapsed().as_secs_f64());
            // The outcome is written by the completer in a batch; the slot is
            // free once it is queued for that (a slow completer thus slows
            // claiming instead of piling up finished-but-unrecorded jobs).
            if done
                .send(Completion {
                    id: ctx.id,
                    started_at: ctx.started_at,
                    outcome,
                })
                .await
                .is_err()
            {
                error!("job outcome dropped: the completer has stopped");
            }
            drop(permit);
        }
        .instrument(span)
    }
}
