// The HTTP server: a route table, API-key check, JSON body parsing, and errors in OpenAI's
// format. Handlers only validate, tokenize and talk to the engine through messages, so the
// event loop never waits on the model. Shutdown stops accepting, lets running requests finish
// for a grace period, then aborts the rest.

import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { handleAbortRequest } from "./abort.js";
import { handleChat } from "./chat.js";
import { handleCompletions } from "./completions.js";
import type { ServerContext } from "./context.js";
import { ApiError, notFound, unauthorized, unavailable } from "./errors.js";
import { handleGenerate } from "./generate.js";
import { readJson, sendError } from "./http.js";
import {
  handleFlushCache,
  handleHealth,
  handleHealthGenerate,
  handleMetrics,
  handleModel,
  handleModelInfo,
  handleModels,
  handleServerInfo,
} from "./info.js";
import { handleDetokenize, handleTokenize } from "./tokenize.js";

type Handler = (ctx: ServerContext, req: IncomingMessage, res: ServerResponse, body: unknown, arg: string) => void | Promise<void>;

interface Route {
  methods: string[];
  path: string | RegExp;
  handler: Handler;
  /** Reads a JSON body first. */
  body?: boolean;
  /** Starts generations: refused while shutting down. */
  work?: boolean;
  /** Served without the API key (SGLang exempts health checks and metrics). */
  open?: boolean;
}

const ROUTES: Route[] = [
  { methods: ["POST"], path: "/v1/chat/completions", handler: (c, q, s, b) => handleChat(c, b, q, s), body: true, work: true },
  { methods: ["POST"], path: "/v1/completions", handler: (c, q, s, b) => handleCompletions(c, b, q, s), body: true, work: true },
  { methods: ["POST", "PUT"], path: "/generate", handler: (c, q, s, b) => handleGenerate(c, b, q, s), body: true, work: true },
  { methods: ["GET"], path: "/v1/models", handler: (c, _q, s) => handleModels(c, s) },
  { methods: ["GET"], path: /^\/v1\/models\/(.+)$/, handler: (c, _q, s, _b, m) => handleModel(c, s, decodeURIComponent(m)) },
  { methods: ["GET", "POST"], path: "/health", handler: (c, _q, s) => handleHealth(c, s), open: true },
  { methods: ["GET", "POST"], path: "/health_generate", handler: (c, _q, s) => handleHealthGenerate(c, s), open: true },
  { methods: ["GET"], path: "/model_info", handler: (c, _q, s) => handleModelInfo(c, s) },
  { methods: ["GET"], path: "/get_model_info", handler: (c, _q, s) => handleModelInfo(c, s) },
  { methods: ["GET"], path: "/server_info", handler: (c, _q, s) => handleServerInfo(c, s) },
  { methods: ["GET"], path: "/get_server_info", handler: (c, _q, s) => handleServerInfo(c, s) },
  { methods: ["GET", "POST"], path: "/flush_cache", handler: (c, _q, s) => handleFlushCache(c, s) },
  { methods: ["POST"], path: "/abort_request", handler: (c, _q, s, b) => handleAbortRequest(c, b, s), body: true },
  { methods: ["GET"], path: "/metrics", handler: (c, _q, s) => handleMetrics(c, s), open: true },
  { methods: ["POST"], path: "/tokenize", handler: (c, _q, s, b) => handleTokenize(c, b, s), body: true },
  { methods: ["POST"], path: "/v1/tokenize", handler: (c, _q, s, b) => handleTokenize(c, b, s), body: true },
  { methods: ["POST"], path: "/detokenize", handler: (c, _q, s, b) => handleDetokenize(c, b, s), body: true },
  { methods: ["POST"], path: "/v1/detokenize", handler: (c, _q, s, b) => handleDetokenize(c, b, s), body: true },
];

function match(path: string): { route: Route; arg: string }[] {
  const out: { route: Route; arg: string }[] = [];
  for (const route of ROUTES) {
    if (typeof route.path === "string") {
      if (route.path === path) out.push({ route, arg: "" });
    } else {
      const m = route.path.exec(path);
      if (m) out.push({ route, arg: m[1] });
    }
  }
  return out;
}

function authorized(ctx: ServerContext, req: IncomingMessage): boolean {
  const key = ctx.config.apiKey;
  if (!key) return true;
  const auth = req.headers.authorization ?? "";
  return auth === `Bearer ${key}`;
}

async function dispatch(ctx: ServerContext, req: IncomingMessage, res: ServerResponse): Promise<void> {
  const path = (req.url ?? "/").split("?")[0].replace(/\/+$/, "") || "/";
  const found = match(path);
  const open = found.length > 0 && found.every((f) => f.route.open);
  if (!open && !authorized(ctx, req)) throw unauthorized();
  if (found.length === 0) throw notFound(`Not Found: ${req.method} ${path}`, null, "not_found");
  const hit = found.find((f) => f.route.methods.includes(req.method ?? "GET"));
  if (!hit) {
    res.setHeader("allow", found.flatMap((f) => f.route.methods).join(", "));
    throw new ApiError(405, `Method ${req.method} not allowed on ${path}`, "invalid_request_error", null, "method_not_allowed");
  }
  if (hit.route.work && ctx.state.shuttingDown) throw unavailable("the server is shutting down");
  const body = hit.route.body ? await readJson(req, ctx.config.maxBodyBytes) : undefined;
  await hit.route.handler(ctx, req, res, body, hit.arg);
}

export interface RunningServer {
  server: Server;
  url: string;
  port: number;
  /**
   * Stops accepting, waits up to `graceMs` for running requests, aborts what is left and
   * closes every connection. The engine is not shut down here (its owner does that).
   */
  close(graceMs?: number): Promise<void>;
}

export function createApp(ctx: ServerContext): Server {
  return createServer((req, res) => {
    ctx.state.inflight++;
    const started = performance.now();
    res.once("close", () => {
      ctx.state.inflight--;
      ctx.log.debug(`${req.method} ${req.url} ${res.statusCode} ${(performance.now() - started).toFixed(1)} ms`);
    });
    dispatch(ctx, req, res).catch((e: unknown) => {
      const err = sendError(res, e);
      if (err.status >= 500 && err.status !== 503) ctx.log.error(`${req.method} ${req.url}: ${err.message}`);
    });
  });
}

export async function listen(ctx: ServerContext, host: string, port: number): Promise<RunningServer> {
  const server = createApp(ctx);
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.off("error", reject);
      resolve();
    });
  });
  const addr = server.address() as AddressInfo;
  const shownHost = addr.family === "IPv6" ? `[${addr.address}]` : addr.address;
  return {
    server,
    port: addr.port,
    url: `http://${shownHost}:${addr.port}`,
    close: (graceMs = 30_000) => closeServer(ctx, server, graceMs),
  };
}

async function closeServer(ctx: ServerContext, server: Server, graceMs: number): Promise<void> {
  ctx.state.shuttingDown = true;
  const closed = new Promise<void>((resolve) => server.close(() => resolve()));
  server.closeIdleConnections();
  const deadline = Date.now() + graceMs;
  while (ctx.state.inflight > 0 && Date.now() < deadline) await sleep(20);
  if (ctx.state.inflight > 0) {
    ctx.log.warn(`aborting ${ctx.state.byRid.size} running choice(s) at shutdown`);
    for (const g of ctx.state.byRid.values()) g.abort("the server is shutting down", true);
    const until = Date.now() + 2000;
    while (ctx.state.inflight > 0 && Date.now() < until) await sleep(20);
  }
  server.closeAllConnections();
  await closed;
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
