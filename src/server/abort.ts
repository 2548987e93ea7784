// SGLang's POST /abort_request: {"rid": id} ends that running request, {"abort_all": true} every
// running one. Aborted choices end like any other (finish_reason abort, the text so far) and the
// engine frees their KV. An id that is unknown or already finished is not an error — the request
// may have ended just before — as in SGLang; the answer is an empty 200 either way.

import type { ServerResponse } from "node:http";
import type { ServerContext } from "./context.js";
import { badRequest } from "./errors.js";
import { optBool, requireObject } from "./validate.js";

export function handleAbortRequest(ctx: ServerContext, body: unknown, res: ServerResponse): void {
  const o = requireObject(body);
  const all = optBool(o, "abort_all", false);
  const rid = o.rid;
  if (!all && (typeof rid !== "string" || rid === "")) throw badRequest("give 'rid' (the id of a running request) or 'abort_all': true", "rid");
  const byRid = ctx.state.byRid;
  const targets = all ? [...byRid.values()] : byRid.has(rid as string) ? [byRid.get(rid as string)!] : [];
  for (const t of targets) t.abort("aborted by /abort_request", false, true);
  res.writeHead(200, { "content-length": "0" });
  res.end();
}
