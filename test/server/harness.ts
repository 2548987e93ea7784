// Starts the HTTP server in-process on an ephemeral loopback port, over the fake engine and
// the scout-tiny fixture's tokenizer.

import { listen, type RunningServer } from "../../src/server/app.js";
import type { ServerConfig, ServerContext } from "../../src/server/context.js";
import { Logger } from "../../src/server/log.js";
import { TokenTexts } from "../../src/server/logprobs.js";
import { Metrics } from "../../src/server/metrics.js";
import { ChatTemplate } from "../../src/tokenizer/chat_template.js";
import { Tokenizer } from "../../src/tokenizer/tokenizer.js";
import { fixturePath } from "../../src/util/repo.js";
import { FakeEngine, type FakeOptions } from "./fake_engine.js";

export const MODEL = "scout-tiny";

export interface FakeServer extends RunningServer {
  ctx: ServerContext;
  engine: FakeEngine;
  tokenizer: Tokenizer;
}

export async function startFakeServer(
  opts: { engine?: Partial<FakeOptions>; config?: Partial<ServerConfig>; contextLength?: number } = {},
): Promise<FakeServer> {
  const dir = fixturePath("scout-tiny");
  const tokenizer = await Tokenizer.load(dir);
  const engine = new FakeEngine({ vocabSize: 512, ...opts.engine });
  const config: ServerConfig = { servedModelName: MODEL, modelPath: dir, enableMetrics: true, ...opts.config };
  const ctx: ServerContext = {
    engine,
    info: { contextLength: opts.contextLength ?? 256, vocabSize: 512 },
    tokenizer,
    texts: new TokenTexts(tokenizer),
    chatTemplate: ChatTemplate.resolve(tokenizer, "llama-4"),
    config,
    metrics: config.enableMetrics ? new Metrics(MODEL, engine) : undefined,
    log: new Logger("error"),
    state: { shuttingDown: false, inflight: 0, byRid: new Map() },
  };
  const running = await listen(ctx, "127.0.0.1", 0);
  return { ...running, ctx, engine, tokenizer };
}

export async function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<{ status: number; json: any; text: string }> {
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
  const text = await res.text();
  let json: any;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, json, text };
}

/** Reads an SSE response into its data payloads (JSON-parsed, except "[DONE]"). */
export async function sse(res: Response): Promise<any[]> {
  const text = await res.text();
  return text
    .split("\n\n")
    .filter((b) => b.startsWith("data: "))
    .map((b) => b.slice(6))
    .map((d) => (d === "[DONE]" ? d : JSON.parse(d)));
}
