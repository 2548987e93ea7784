// Prometheus metrics (--enable-metrics) under SGLang's names, so existing dashboards work:
// request/token counters and latency histograms recorded as requests finish, and gauges read
// from the engine's stats at scrape time.

import { Counter, Gauge, Histogram, Registry } from "prom-client";
import type { Engine } from "../engine/types.js";
import type { GenResult } from "./generation.js";

const LATENCY_BUCKETS = [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320, 640];
const ITL_BUCKETS = [0.002, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 1, 2, 5];

export class Metrics {
  readonly registry = new Registry();
  private readonly labels: { model_name: string };
  private readonly promptTokens: Counter<"model_name">;
  private readonly generationTokens: Counter<"model_name">;
  private readonly cachedTokens: Counter<"model_name">;
  private readonly requests: Counter<"model_name">;
  private readonly aborted: Counter<"model_name">;
  private readonly ttft: Histogram<"model_name">;
  private readonly e2e: Histogram<"model_name">;
  private readonly itl: Histogram<"model_name">;

  constructor(modelName: string, engine: Engine) {
    this.labels = { model_name: modelName };
    const registers = [this.registry];
    const labelNames = ["model_name"] as const;
    const counter = (name: string, help: string) => new Counter({ name, help, labelNames, registers });
    this.promptTokens = counter("sglang:prompt_tokens_total", "Number of prefill tokens processed.");
    this.generationTokens = counter("sglang:generation_tokens_total", "Number of generation tokens processed.");
    this.cachedTokens = counter("sglang:cached_tokens_total", "Number of prompt tokens served from the prefix cache.");
    this.requests = counter("sglang:num_requests_total", "Number of requests processed.");
    this.aborted = counter("sglang:num_aborted_requests_total", "Number of requests aborted.");
    const histogram = (name: string, help: string, buckets: number[]) =>
      new Histogram({ name, help, labelNames, buckets, registers });
    this.ttft = histogram("sglang:time_to_first_token_seconds", "Histogram of time to first token in seconds.", LATENCY_BUCKETS);
    this.e2e = histogram("sglang:e2e_request_latency_seconds", "Histogram of end-to-end request latency in seconds.", LATENCY_BUCKETS);
    this.itl = histogram("sglang:inter_token_latency_seconds", "Histogram of inter-token latency in seconds.", ITL_BUCKETS);

    // Engine gauges, refreshed once per scrape (one stats() round trip to the worker).
    const labels = this.labels;
    let pending: ReturnType<Engine["stats"]> | undefined;
    const stats = () => (pending ??= engine.stats().finally(() => setImmediate(() => (pending = undefined))));
    const gauge = (name: string, help: string, read: (s: Awaited<ReturnType<Engine["stats"]>>) => number) =>
      new Gauge({
        name,
        help,
        labelNames,
        registers,
        async collect() {
          this.set(labels, read(await stats()));
        },
      });
    gauge("sglang:num_running_reqs", "The number of running requests.", (s) => s.running);
    gauge("sglang:num_queue_reqs", "The number of requests in the waiting queue.", (s) => s.waiting);
    gauge("sglang:num_used_tokens", "The number of used KV tokens.", (s) => s.fullPoolUsed);
    gauge("sglang:token_usage", "The token usage of the full KV pool.", (s) => ratio(s.fullPoolUsed, s.fullPoolSize));
    gauge("sglang:swa_token_usage", "The token usage of the SWA KV pool.", (s) => ratio(s.swaPoolUsed, s.swaPoolSize));
    gauge("sglang:cache_hit_rate", "The prefix cache hit rate.", (s) => ratio(s.cachedTokens, s.promptTokens));
  }

  /** Records each choice of a request once it finishes. */
  trackRequests(done: Promise<GenResult[]>): void {
    done.then(
      (results) => results.forEach((r) => this.record(r)),
      () => {},
    );
  }

  observeInterToken(seconds: number, count: number): void {
    for (let i = 0; i < count; i++) this.itl.observe(this.labels, seconds);
  }

  private record(r: GenResult): void {
    const l = this.labels;
    this.requests.inc(l);
    if (r.finish.reason === "abort") this.aborted.inc(l);
    this.promptTokens.inc(l, r.promptIds.length);
    this.generationTokens.inc(l, r.outputIds.length);
    this.cachedTokens.inc(l, r.cachedTokens);
    if (r.firstTokenAt !== undefined) this.ttft.observe(l, (r.firstTokenAt - r.startedAt) / 1000);
    this.e2e.observe(l, (r.finishedAt - r.startedAt) / 1000);
  }

  async text(): Promise<{ contentType: string; body: string }> {
    return { contentType: this.registry.contentType, body: await this.registry.metrics() };
  }
}

function ratio(a: number, b: number): number {
  return b > 0 ? a / b : 0;
}
