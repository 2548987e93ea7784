// Runs `tsglang launch` as a child process on an ephemeral loopback port and waits for its
// ready line, as a user or a test harness would.

import { spawn, spawnSync, type ChildProcess } from "node:child_process";
import { join } from "node:path";
import { packageRoot } from "../../src/util/repo.js";

export const CLI = join(packageRoot(), "dist", "src", "cli", "main.js");

export interface Launched {
  url: string;
  proc: ChildProcess;
  stderr: () => string;
  /** Sends a signal and resolves with the exit code. */
  stop(signal?: NodeJS.Signals): Promise<number | null>;
}

export function launch(args: string[], timeoutMs = 120_000): Promise<Launched> {
  const proc = spawn(process.execPath, [CLI, "launch", "--port", "0", ...args], { stdio: ["ignore", "pipe", "pipe"] });
  let out = "";
  let err = "";
  proc.stderr!.on("data", (d) => (err += d));
  const exited = new Promise<number | null>((r) => proc.once("exit", (code) => r(code)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill("SIGKILL");
      reject(new Error(`no ready line within ${timeoutMs} ms; stderr:\n${err}`));
    }, timeoutMs);
    const early = (code: number | null) => {
      clearTimeout(timer);
      reject(new Error(`launch exited with ${code} before ready; stderr:\n${err}`));
    };
    proc.once("exit", early);
    proc.stdout!.on("data", (d) => {
      out += d;
      const m = /ready to roll!.* at (http:\/\/\S+)/.exec(out);
      if (!m) return;
      clearTimeout(timer);
      proc.off("exit", early);
      resolve({
        url: m[1],
        proc,
        stderr: () => err,
        stop: (signal = "SIGTERM") => {
          if (proc.exitCode === null) proc.kill(signal);
          return exited;
        },
      });
    });
  });
}

export function tsglang(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: "utf8", timeout: 60_000 });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}
