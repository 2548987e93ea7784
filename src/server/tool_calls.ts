// Tool calls in Llama 4's pythonic format (`--tool-call-parser pythonic`, the parser SGLang uses
// for Llama 4): the model ends its answer with a Python-style list of calls,
//   [get_weather(city="Paris", unit='c'), get_time(zone=None)]
// optionally wrapped in <|python_start|> … <|python_end|> (llama4-spec.md §5.4). The arguments
// are Python literals (strings, numbers, True/False/None, lists, tuples, dicts); they become the
// JSON `arguments` string of an OpenAI tool call. Anything that does not parse as such a list of
// calls to tools the request offered stays plain content.

export interface ToolCall {
  name: string;
  /** The keyword arguments as a JSON object, as OpenAI's `function.arguments`. */
  arguments: string;
}

export interface ParsedToolCalls {
  /** Text before the call list, or null when there is none. */
  content: string | null;
  calls: ToolCall[];
}

const PY_START = "<|python_start|>";
const PY_END = "<|python_end|>";

/**
 * The calls at the end of `text` (everything from its first '[' that parses as a call list to the
 * end), or null when there are none or a call names a tool not in `tools`.
 */
export function parsePythonicToolCalls(text: string, tools: ReadonlySet<string>): ParsedToolCalls | null {
  const body = text.split(PY_START).join("").split(PY_END).join("").trimEnd();
  for (let at = body.indexOf("["); at >= 0; at = body.indexOf("[", at + 1)) {
    const calls = new Parser(body, at).callList();
    if (!calls) continue;
    if (calls.length === 0 || !calls.every((c) => tools.has(c.name))) return null;
    const before = body.slice(0, at).trim();
    return { content: before === "" ? null : before, calls };
  }
  return null;
}

/**
 * Streaming: text goes out as it comes, except from a '[' (or <|python_start|>) on while what
 * follows can still be a call list reaching the end of the output; that part is held, and at the
 * end it becomes tool calls (finish) or content again — the same split parsePythonicToolCalls
 * makes of the whole text.
 */
export class ToolCallStream {
  private held = "";

  constructor(private readonly tools: ReadonlySet<string>) {}

  /** The content to send for this delta (possibly "": held back). */
  push(delta: string): string {
    this.held += delta;
    let out = "";
    for (;;) {
      const at = startOfList(this.held);
      if (at < 0) {
        out += this.held;
        this.held = "";
        break;
      }
      out += this.held.slice(0, at);
      this.held = this.held.slice(at);
      if (listState(this.held) !== "invalid") break;
      // Not a call list from here: give up this bracket and look for the next.
      const skip = this.held.startsWith(PY_START) ? PY_START.length : 1;
      out += this.held.slice(0, skip);
      this.held = this.held.slice(skip);
    }
    return out;
  }

  /** At the end of the output: the held calls, or the held text as content. */
  finish(): { content: string; calls: ToolCall[] | null } {
    const held = this.held;
    this.held = "";
    const parsed = held === "" ? null : parsePythonicToolCalls(held, this.tools);
    if (!parsed) return { content: held, calls: null };
    return { content: parsed.content ?? "", calls: parsed.calls };
  }
}

/** Where a call list could start in `text`: its first '[' or <|python_start|> (or a prefix of that tag at the end). */
function startOfList(text: string): number {
  const b = text.indexOf("[");
  const p = text.indexOf(PY_START);
  let at = b < 0 ? p : p < 0 ? b : Math.min(b, p);
  // a tag cut off at the end of this delta: hold it until it is complete
  for (let k = Math.max(0, text.length - PY_START.length + 1); k < text.length && at < 0; k++) {
    if (PY_START.startsWith(text.slice(k))) at = k;
  }
  return at;
}

/** Is `text` (starting at a '[' or tag) a complete call list, a prefix of one, or neither? */
function listState(text: string): "complete" | "partial" | "invalid" {
  let body = text.split(PY_START).join("").split(PY_END).join("");
  if (body.trim() === "" || PY_START.startsWith(text)) return "partial";
  // A closing tag still arriving (`…)]<|pyth`): judge the list without it.
  let cut = false;
  for (let k = Math.min(body.length, PY_END.length - 1); k > 0 && !cut; k--) {
    if (PY_END.startsWith(body.slice(-k))) {
      body = body.slice(0, -k);
      cut = true;
    }
  }
  const state = new Parser(body, body.indexOf("[") < 0 ? 0 : body.indexOf("[")).state();
  return cut && state === "complete" ? "partial" : state;
}

class ParseError extends Error {}

/** A recursive-descent reader of the pythonic call list; any deviation is a ParseError. */
class Parser {
  constructor(
    private readonly s: string,
    private i: number,
  ) {}

  /** Complete call list to the end of the text, a prefix of one (input ran out), or neither. */
  state(): "complete" | "partial" | "invalid" {
    try {
      return this.callList(true) ? "complete" : "invalid";
    } catch (e) {
      if (e instanceof ParseError) return this.i >= this.s.length ? "partial" : "invalid";
      throw e;
    }
  }

  /** `[call, call, …]` reaching the end of the text, or null. */
  callList(rethrow = false): ToolCall[] | null {
    try {
      this.expect("[");
      const calls: ToolCall[] = [];
      this.ws();
      if (this.peek() !== "]") {
        for (;;) {
          calls.push(this.call());
          this.ws();
          if (this.peek() === ",") {
            this.i++;
            this.ws();
            if (this.peek() === "]") break;
            continue;
          }
          break;
        }
      }
      this.expect("]");
      this.ws();
      return this.i === this.s.length ? calls : null;
    } catch (e) {
      if (e instanceof ParseError && !rethrow) return null;
      throw e;
    }
  }

  private call(): ToolCall {
    const name = this.name();
    this.ws();
    this.expect("(");
    const args: Record<string, unknown> = {};
    this.items(")", () => {
      const key = this.name();
      this.ws();
      this.expect("=");
      if (Object.hasOwn(args, key)) throw new ParseError(`argument ${key} twice`);
      args[key] = this.value();
    });
    return { name, arguments: JSON.stringify(args) };
  }

  private value(): unknown {
    this.ws();
    const c = this.peek();
    if (c === '"' || c === "'") return this.string();
    if (c === "[") return this.sequence("[", "]");
    if (c === "(") return this.sequence("(", ")");
    if (c === "{") return this.dict();
    if (c === "-" || c === "+" || c === "." || (c >= "0" && c <= "9")) return this.number();
    const word = this.name();
    if (word === "True") return true;
    if (word === "False") return false;
    if (word === "None") return null;
    throw new ParseError(`unexpected ${word}`);
  }

  private sequence(open: string, close: string): unknown[] {
    this.expect(open);
    const out: unknown[] = [];
    this.items(close, () => out.push(this.value()));
    return out;
  }

  private dict(): Record<string, unknown> {
    this.expect("{");
    const out: Record<string, unknown> = {};
    this.items("}", () => {
      const key = this.value();
      if (typeof key !== "string" && typeof key !== "number") throw new ParseError("dict keys must be strings or numbers");
      this.ws();
      this.expect(":");
      out[String(key)] = this.value();
    });
    return out;
  }

  /** Items read by `read` up to `close`, comma-separated (a trailing comma allowed); consumes `close`. */
  private items(close: string, read: () => void): void {
    this.ws();
    while (this.peek() !== close) {
      read();
      this.ws();
      if (this.peek() === ",") {
        this.i++;
        this.ws();
      } else if (this.peek() !== close) {
        throw new ParseError(`expected , or ${close}`);
      }
    }
    this.i++;
  }

  private string(): string {
    const q = this.s[this.i++];
    let out = "";
    for (;;) {
      if (this.i >= this.s.length) throw new ParseError("unterminated string");
      const c = this.s[this.i++];
      if (c === q) return out;
      if (c === "\n") throw new ParseError("newline in a string");
      if (c !== "\\") {
        out += c;
        continue;
      }
      const e = this.s[this.i++];
      const simple: Record<string, string> = { n: "\n", t: "\t", r: "\r", "\\": "\\", "'": "'", '"': '"', "0": "\0", b: "\b", f: "\f" };
      if (e in simple) out += simple[e];
      else if (e === "u" || e === "x") {
        const len = e === "u" ? 4 : 2;
        const hex = this.s.slice(this.i, this.i + len);
        if (!new RegExp(`^[0-9a-fA-F]{${len}}$`).test(hex)) throw new ParseError("bad escape");
        out += String.fromCharCode(parseInt(hex, 16));
        this.i += len;
      } else {
        out += "\\" + e; // Python keeps unknown escapes as written
      }
    }
  }

  private number(): number {
    const m = /^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?/.exec(this.s.slice(this.i));
    if (!m) throw new ParseError("bad number");
    this.i += m[0].length;
    return Number(m[0]);
  }

  private name(): string {
    const m = /^[A-Za-z_][A-Za-z0-9_]*/.exec(this.s.slice(this.i));
    if (!m) throw new ParseError("expected a name");
    this.i += m[0].length;
    return m[0];
  }

  private ws(): void {
    while (this.i < this.s.length && /\s/.test(this.s[this.i])) this.i++;
  }

  private peek(): string {
    return this.s[this.i] ?? "";
  }

  private expect(c: string): void {
    if (this.s[this.i] !== c) throw new ParseError(`expected ${c}`);
    this.i++;
  }
}
