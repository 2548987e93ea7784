// Small helpers over node:http: read a JSON body with a size limit, and send JSON or errors.

import type { IncomingMessage, ServerResponse } from "node:http";
import { ApiError, badRequest, toApiError } from "./errors.js";

const DEFAULT_MAX_BODY = 64 * 1024 * 1024;

export async function readBody(req: IncomingMessage, limit = DEFAULT_MAX_BODY): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req) {
    size += (chunk as Buffer).length;
    if (size > limit) throw new ApiError(413, `request body larger than ${limit} bytes`, "invalid_request_error", null, "payload_too_large");
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString("utf8");
}

/** Parses a JSON body; an empty body is {} (GET-style calls to POST routes). */
export async function readJson(req: IncomingMessage, limit?: number): Promise<unknown> {
  const text = await readBody(req, limit);
  if (text.trim() === "") return {};
  try {
    return JSON.parse(text);
  } catch (e) {
    throw badRequest(
      `We could not parse the JSON body of your request: ${(e as Error).message}`,
      null,
      "invalid_json",
    );
  }
}

export function sendJson(res: ServerResponse, status: number, body: unknown): void {
  const text = JSON.stringify(body);
  res.writeHead(status, { "content-type": "application/json", "content-length": Buffer.byteLength(text) });
  res.end(text);
}

export function sendText(res: ServerResponse, status: number, text: string, contentType = "text/plain; charset=utf-8"): void {
  res.writeHead(status, { "content-type": contentType, "content-length": Buffer.byteLength(text) });
  res.end(text);
}

/** Sends an error as JSON if the response has not started; otherwise just ends it. */
export function sendError(res: ServerResponse, e: unknown): ApiError {
  const err = toApiError(e);
  if (!res.headersSent) sendJson(res, err.status, err.body());
  else if (!res.writableEnded) res.end();
  return err;
}
