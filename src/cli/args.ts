// A small typed flag parser shared by the commands: `--flag value`, `--flag=value`, boolean
// switches, integers and numbers with range checks, string choices, aliases, defaults, a generated
// `--help`, and an error naming any unknown flag. Flag names keep their dashes: values["model-path"].

export type FlagSpec =
  | { type: "boolean"; help: string; alias?: readonly string[] }
  | { type: "string"; help: string; alias?: readonly string[]; default?: string; choices?: readonly string[]; metavar?: string }
  | {
      type: "int" | "number";
      help: string;
      alias?: readonly string[];
      default?: number;
      min?: number;
      max?: number;
      /** Words accepted besides numbers (e.g. "auto"). */
      keywords?: readonly string[];
      metavar?: string;
    };

export type FlagSpecs = Record<string, FlagSpec>;

type ValueOf<S extends FlagSpec> = S extends { type: "boolean" }
  ? boolean
  : S extends { type: "string" }
    ? S extends { choices: readonly (infer C)[] }
      ? C
      : string
    : S extends { keywords: readonly (infer K)[] }
      ? number | K
      : number;

/** Booleans are always present (false when absent); flags with a default always have a value. */
export type FlagValues<T extends FlagSpecs> = {
  [K in keyof T]: T[K] extends { type: "boolean" } | { default: string | number } ? ValueOf<T[K]> : ValueOf<T[K]> | undefined;
};

export class ArgsError extends Error {
  constructor(message: string) {
    super(message);
    this.name = "ArgsError";
  }
}

export interface ParseResult<T extends FlagSpecs> {
  values: FlagValues<T>;
  /** True when --help or -h was given (values then hold the defaults only). */
  help: boolean;
  /** Flags given explicitly on the command line (canonical names). */
  given: Set<keyof T & string>;
}

/** Parses argv against specs. Throws ArgsError for unknown flags, missing or invalid values. */
export function parseArgs<T extends FlagSpecs>(specs: T, argv: readonly string[]): ParseResult<T> {
  const byName = new Map<string, string>();
  for (const [name, spec] of Object.entries(specs)) {
    byName.set(name, name);
    for (const a of spec.alias ?? []) byName.set(a, name);
  }
  const values: Record<string, unknown> = {};
  for (const [name, spec] of Object.entries(specs)) {
    if (spec.type === "boolean") values[name] = false;
    else if (spec.default !== undefined) values[name] = spec.default;
  }
  const given = new Set<string>();
  let help = false;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if (arg === "--help" || arg === "-h") {
      help = true;
      continue;
    }
    if (!arg.startsWith("--") || arg === "--") throw new ArgsError(`unexpected argument '${arg}'`);
    const eq = arg.indexOf("=");
    const key = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
    const name = byName.get(key);
    if (name === undefined) throw new ArgsError(`unknown flag --${key}${suggest(key, [...byName.keys()])}`);
    const spec = specs[name];
    let raw: string | undefined = eq < 0 ? undefined : arg.slice(eq + 1);
    if (spec.type === "boolean") {
      if (raw === undefined || raw === "true") values[name] = true;
      else if (raw === "false") values[name] = false;
      else throw new ArgsError(`--${key} takes no value or =true/=false, got '${raw}'`);
    } else {
      if (raw === undefined) {
        raw = argv[i + 1];
        if (raw === undefined || (raw.startsWith("--") && raw.length > 2)) throw new ArgsError(`--${key} needs a value`);
        i++;
      }
      values[name] = convert(key, spec, raw);
    }
    given.add(name);
  }
  return { values: values as FlagValues<T>, help, given: given as Set<keyof T & string> };
}

function convert(key: string, spec: Exclude<FlagSpec, { type: "boolean" }>, raw: string): string | number {
  if (spec.type === "string") {
    if (spec.choices && !spec.choices.includes(raw)) throw new ArgsError(`--${key} must be one of ${spec.choices.join(", ")}, got '${raw}'`);
    return raw;
  }
  if (spec.keywords?.includes(raw)) return raw;
  const what = spec.type === "int" ? "an integer" : "a number";
  const alt = spec.keywords?.length ? ` or ${spec.keywords.map((k) => `'${k}'`).join(", ")}` : "";
  const n = raw.trim() === "" ? NaN : Number(raw);
  if (!Number.isFinite(n) || (spec.type === "int" && !Number.isInteger(n))) throw new ArgsError(`--${key} must be ${what}${alt}, got '${raw}'`);
  if (spec.min !== undefined && n < spec.min) throw new ArgsError(`--${key} must be ≥ ${spec.min}, got ${raw}`);
  if (spec.max !== undefined && n > spec.max) throw new ArgsError(`--${key} must be ≤ ${spec.max}, got ${raw}`);
  return n;
}

function suggest(key: string, names: string[]): string {
  const close = names.filter((n) => n.includes(key) || key.includes(n) || editDistance(n, key) <= 2);
  return close.length ? ` (did you mean --${close[0]}?)` : "";
}

function editDistance(a: string, b: string): number {
  const d = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    let prev = d[0];
    d[0] = i;
    for (let j = 1; j <= b.length; j++) {
      const tmp = d[j];
      d[j] = Math.min(d[j] + 1, d[j - 1] + 1, prev + (a[i - 1] === b[j - 1] ? 0 : 1));
      prev = tmp;
    }
  }
  return d[b.length];
}

/** `usage: tsglang <command> [flags]` followed by one line per flag with its default. */
export function formatHelp(command: string, summary: string, specs: FlagSpecs): string {
  const rows = Object.entries(specs).map(([name, spec]) => {
    let left = `--${name}`;
    if (spec.type !== "boolean") {
      const metavar = spec.metavar ?? (spec.type === "string" ? (spec.choices ? spec.choices.join("|") : "S") : spec.keywords?.length ? `N|${spec.keywords.join("|")}` : "N");
      left += ` ${metavar}`;
    }
    let right = spec.help;
    if (spec.alias?.length) right += ` (alias: ${spec.alias.map((a) => `--${a}`).join(", ")})`;
    if (spec.type !== "boolean" && spec.default !== undefined) right += ` [default: ${spec.default}]`;
    return [left, right] as const;
  });
  const width = Math.min(34, Math.max(...rows.map(([l]) => l.length)) + 2);
  const lines = rows.map(([l, r]) => (l.length + 2 > width ? `  ${l}\n  ${" ".repeat(width)}${r}` : `  ${l.padEnd(width)}${r}`));
  return `usage: tsglang ${command} [flags]\n\n${summary}\n\nflags:\n${lines.join("\n")}\n  ${"--help".padEnd(width)}show this help`;
}
