// Server-sent events as OpenAI and SGLang stream them: `data: {json}\n\n` per chunk and a
// final `data: [DONE]\n\n`. An error after the stream started is sent as a data chunk holding
// {"error": {...}}, which is how the openai client expects it.

import type { ServerResponse } from "node:http";
import type { ApiError } from "./errors.js";

export class SseStream {
  private started = false;

  constructor(private readonly res: ServerResponse) {}

  /** True once the client has gone; writes are then dropped. */
  get closed(): boolean {
    return this.res.writableEnded || this.res.destroyed;
  }

  send(data: unknown): void {
    this.write(JSON.stringify(data));
  }

  error(err: ApiError): void {
    this.send(err.body());
  }

  done(): void {
    if (this.closed) return;
    this.write("[DONE]");
    this.res.end();
  }

  private write(payload: string): void {
    if (this.closed) return;
    if (!this.started) {
      this.res.writeHead(200, {
        "content-type": "text/event-stream; charset=utf-8",
        "cache-control": "no-cache",
        connection: "keep-alive",
        "x-accel-buffering": "no",
      });
      this.started = true;
    }
    this.res.write(`data: ${payload}\n\n`);
  }
}
