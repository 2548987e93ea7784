#!/usr/bin/env node
// `tsglang <command> [flags]`: each command lives in src/cli/<command>.ts and exports
// `main(argv): Promise<number>` (the exit code). Errors print one line, never a stack.

const COMMANDS: Record<string, string> = {
  launch: "serve a model over HTTP (OpenAI-compatible and SGLang routes)",
  generate: "generate text for one prompt and print it",
  plan: "print the memory plan for a model on a GPU machine",
  "bench-one-batch": "time prefill and decode of one static batch",
};

function usage(): string {
  const lines = Object.entries(COMMANDS).map(([c, d]) => `  ${c.padEnd(16)} ${d}`);
  return `usage: tsglang <command> [flags]\n\ncommands:\n${lines.join("\n")}\n\nRun 'tsglang <command> --help' for its flags.`;
}

async function run(argv: string[]): Promise<number> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === "--help" || cmd === "-h") {
    console.log(usage());
    return cmd ? 0 : 2;
  }
  if (!(cmd in COMMANDS)) {
    console.error(`tsglang: unknown command '${cmd}'\n${usage()}`);
    return 2;
  }
  const mod = (await import(`./${cmd}.js`)) as { main(argv: string[]): Promise<number> };
  return mod.main(rest);
}

run(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    const msg = err instanceof Error ? err.message : String(err);
    console.error(`tsglang: error: ${msg}`);
    if (process.env.TSGLANG_DEBUG) console.error(err);
    process.exitCode = 1;
  },
);
