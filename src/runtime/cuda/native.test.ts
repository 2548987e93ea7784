// The addon's library loading (native/src/dl.h openFirst) without a GPU: every candidate is tried
// in order and each failure is named — a path that does not open, a library without the entry
// points. Runs first thing in its own process, before anything could have loaded the real ones.

import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { test } from "node:test";
import { addonPath, loadNative } from "./native.js";

const built = existsSync(addonPath());

test("candidates are tried in order; a missing file and a library without the symbols are both named", { skip: built ? false : "the addon is not built" }, () => {
  const n = loadNative() as unknown as { openDriver(p: string[]): string; ncclOpen(p: string[]): unknown };
  // libm is on every glibc system and has none of CUDA's or NCCL's entry points.
  assert.throws(
    () => n.openDriver(["/nonexistent/libcuda.so.1", "libm.so.6"]),
    (e: Error) =>
      /^tsglang cuda: cannot load the CUDA driver library/.test(e.message) &&
      /\/nonexistent\/libcuda\.so\.1: .*(No such file|cannot open)/.test(e.message) &&
      /libm\.so\.6: has no cuInit \(driver too old\?\)/.test(e.message) &&
      e.message.indexOf("/nonexistent") < e.message.indexOf("libm.so.6"),
  );
  assert.throws(
    () => n.ncclOpen(["libm.so.6", "/nonexistent/libnccl.so.2"]),
    (e: Error) => /^tsglang nccl: cannot load NCCL/.test(e.message) && /libm\.so\.6: has no ncclGetVersion/.test(e.message) && /\/nonexistent\/libnccl\.so\.2: /.test(e.message),
  );
});
