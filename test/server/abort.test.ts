// SGLang's /abort_request against a live server on the CPU fixture: a client-chosen `rid` on
// /generate, streamed and non-streamed requests ended mid-generation (finish_reason abort, the
// tokens so far), abort_all, and the bad-input cases — with the server serving on afterwards.

import assert from "node:assert/strict";
import { after, before, describe, it } from "node:test";
import { fixturePath } from "../../src/util/repo.js";
import { post } from "./harness.js";
import { launch, type Launched } from "./launch_helper.js";

const LONG = 3000; // tokens asked for: far more than arrive before the abort

/** A streamed /generate; resolves once the first event has arrived, with the rest to come. */
async function openStream(url: string, body: object): Promise<{ events: Promise<any[]> }> {
  const res = await fetch(`${url}/generate`, { method: "POST", headers: { "content-type": "application/json" }, body: JSON.stringify({ ...body, stream: true }) });
  assert.equal(res.status, 200);
  const reader = res.body!.getReader();
  const dec = new TextDecoder();
  let buf = "";
  const events: any[] = [];
  const pump = async (untilFirst: boolean): Promise<void> => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buf += dec.decode(value, { stream: true });
      let at: number;
      while ((at = buf.indexOf("\n\n")) >= 0) {
        const data = buf.slice(0, at).replace(/^data: /, "");
        buf = buf.slice(at + 2);
        events.push(data === "[DONE]" ? data : JSON.parse(data));
      }
      if (untilFirst && events.length > 0) return;
    }
  };
  await pump(true);
  return { events: pump(false).then(() => events) };
}

const longRequest = (rid: string) => ({ input_ids: [1, 5, 9, 12], rid, sampling_params: { max_new_tokens: LONG, temperature: 0, ignore_eos: true } });

describe("/abort_request", () => {
  let srv: Launched;
  before(async () => {
    srv = await launch(["--model-path", fixturePath("scout-tiny"), "--device", "cpu", "--log-level", "warning"]);
  });
  after(async () => {
    await srv?.stop();
  });

  it("ends a streamed request by its rid: finish_reason abort, the tokens so far, then [DONE]", async () => {
    const s = await openStream(srv.url, longRequest("stream-1"));
    const r = await post(`${srv.url}/abort_request`, { rid: "stream-1" });
    assert.equal(r.status, 200);
    assert.equal(r.text, "");
    const events = await s.events;
    assert.equal(events[events.length - 1], "[DONE]");
    const last = events[events.length - 2];
    assert.equal(last.meta_info.id, "stream-1");
    assert.equal(last.meta_info.finish_reason.type, "abort");
    assert.ok(last.meta_info.completion_tokens >= 1 && last.meta_info.completion_tokens < LONG, `${last.meta_info.completion_tokens} tokens`);
    assert.equal(last.output_ids.length, last.meta_info.completion_tokens);
  });

  it("ends a non-streamed request: 200 with the partial output", async () => {
    const pending = post(`${srv.url}/generate`, longRequest("plain-1"));
    // Abort once the engine has it running.
    for (let i = 0; i < 200; i++) {
      const info = await (await fetch(`${srv.url}/get_server_info`)).json();
      if (info.internal_states[0].num_running_reqs > 0) break;
      await new Promise((r) => setTimeout(r, 5));
    }
    assert.equal((await post(`${srv.url}/abort_request`, { rid: "plain-1" })).status, 200);
    const r = await pending;
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.meta_info.finish_reason.type, "abort");
    assert.ok(r.json.meta_info.completion_tokens < LONG);
    assert.equal(r.json.output_ids.length, r.json.meta_info.completion_tokens);
  });

  it("abort_all ends every running request", async () => {
    const a = await openStream(srv.url, longRequest("all-a"));
    const b = await openStream(srv.url, longRequest("all-b"));
    assert.equal((await post(`${srv.url}/abort_request`, { abort_all: true })).status, 200);
    for (const s of [a, b]) {
      const events = await s.events;
      assert.equal(events[events.length - 2].meta_info.finish_reason.type, "abort");
    }
  });

  it("a running rid cannot be reused; unknown ids are not an error; bad bodies are 400", async () => {
    const s = await openStream(srv.url, longRequest("dup"));
    const dup = await post(`${srv.url}/generate`, longRequest("dup"));
    assert.equal(dup.status, 400);
    assert.equal(dup.json.error.param, "rid");
    await post(`${srv.url}/abort_request`, { rid: "dup" });
    await s.events;
    assert.equal((await post(`${srv.url}/abort_request`, { rid: "never-ran" })).status, 200);
    for (const bad of [{}, { rid: 5 }, { rid: "" }, "[1]"]) {
      const r = await post(`${srv.url}/abort_request`, bad);
      assert.equal(r.status, 400, JSON.stringify(bad));
      assert.ok(r.json.error.message.length > 0);
    }
    const rids = await post(`${srv.url}/generate`, { text: "a", rid: ["x", "y"], sampling_params: { max_new_tokens: 2 } });
    assert.equal(rids.status, 400);
    assert.match(rids.json.error.message, /'rid' has 2 ids for 1 choices/);
  });

  it("the server serves on, and a rid is free again once its request ended", async () => {
    const r = await post(`${srv.url}/generate`, { input_ids: [1, 5, 9], rid: "dup", sampling_params: { max_new_tokens: 4, temperature: 0, ignore_eos: true } });
    assert.equal(r.status, 200, r.text);
    assert.equal(r.json.meta_info.id, "dup");
    assert.equal(r.json.meta_info.completion_tokens, 4);
    assert.equal(r.json.meta_info.finish_reason.type, "length");
  });
});
