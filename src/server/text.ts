// Generated ids → text, with stop strings. Stop strings are matched on the detokenized text
// (as SGLang does), so a stop may span several tokens. While the text ends with something
// that could still grow into a stop string, that tail is held back: a streamed delta never
// has to be taken back.

import { IncrementalDetokenizer } from "../tokenizer/detokenizer.js";
import type { Tokenizer } from "../tokenizer/tokenizer.js";

export interface TextStep {
  /** Text that became final with this token (often ''). */
  delta: string;
  /** The stop string that matched; generation must end here. */
  matched?: string;
}

export class TextAssembler {
  private readonly detok: IncrementalDetokenizer;
  private readonly maxStopLen: number;
  private text = "";
  private sent = 0;
  private done = false;
  private readonly noStopTrim: boolean;

  constructor(
    tokenizer: Tokenizer,
    private readonly stops: readonly string[],
    opts: { skipSpecialTokens: boolean; noStopTrim?: boolean },
  ) {
    this.detok = new IncrementalDetokenizer(tokenizer, { skipSpecialTokens: opts.skipSpecialTokens });
    this.maxStopLen = Math.max(0, ...stops.map((s) => s.length));
    this.noStopTrim = opts.noStopTrim ?? false;
  }

  /** The full text so far, what has been handed out plus what is held back. */
  get fullText(): string {
    return this.text;
  }

  /** Adds one generated id. */
  push(id: number): TextStep {
    if (this.done) throw new Error("TextAssembler: push after the end");
    return this.add(this.detok.push(id), false);
  }

  /** The end of generation: returns whatever is still held back. */
  finish(): TextStep {
    if (this.done) return { delta: "" };
    const step = this.add(this.detok.flush(), true);
    this.done = true;
    return step;
  }

  private add(piece: string, final: boolean): TextStep {
    const from = Math.max(0, this.text.length - this.maxStopLen + 1);
    this.text += piece;
    const match = this.findStop(from);
    if (match) {
      const end = this.noStopTrim ? match.at + match.stop.length : match.at;
      const delta = this.text.slice(this.sent, end);
      this.text = this.text.slice(0, end);
      this.sent = end;
      this.done = true;
      return { delta, matched: match.stop };
    }
    const safe = final ? this.text.length : this.text.length - this.heldBack();
    if (safe <= this.sent) return { delta: "" };
    const delta = this.text.slice(this.sent, safe);
    this.sent = safe;
    return { delta };
  }

  // The earliest stop string occurrence starting at or after `from`.
  private findStop(from: number): { at: number; stop: string } | undefined {
    let best: { at: number; stop: string } | undefined;
    for (const stop of this.stops) {
      const at = this.text.indexOf(stop, from);
      if (at >= 0 && (best === undefined || at < best.at)) best = { at, stop };
    }
    return best;
  }

  // Length of the longest tail of the text that is a proper prefix of some stop string.
  private heldBack(): number {
    let hold = 0;
    for (const stop of this.stops) {
      for (let k = Math.min(stop.length - 1, this.text.length); k > hold; k--) {
        if (this.text.endsWith(stop.slice(0, k))) {
          hold = k;
          break;
        }
      }
    }
    return hold;
  }
}
