// Turns a stream of generated ids into text pieces for streaming responses.
//
// A byte-level token can end in the middle of a UTF-8 character (emoji, CJK), and some
// decoders change a token's text depending on its neighbours. So, as vLLM and SGLang do,
// we decode a small window of recent ids twice: the ids already emitted ("prefix") and the
// prefix plus the new ids. The difference is new text, emitted only once it no longer
// ends in U+FFFD (an incomplete character); otherwise we wait for more ids.
import type { Tokenizer } from './tokenizer.js';

export interface DetokenizerOptions {
  skipSpecialTokens?: boolean;
}

export class IncrementalDetokenizer {
  private readonly ids: number[] = [];
  private prefixOffset = 0; // start of the context window
  private readOffset = 0; // ids before this have been emitted

  constructor(
    private readonly tokenizer: Tokenizer,
    private readonly opts: DetokenizerOptions = {},
  ) {}

  /** Adds one generated id; returns the text that became final (often ''). */
  push(id: number): string {
    if (this.opts.skipSpecialTokens && this.tokenizer.isSpecial(id)) return '';
    this.ids.push(id);
    return this.emit(false);
  }

  /** Returns whatever is still held back (e.g. a truncated character at the end). */
  flush(): string {
    return this.emit(true);
  }

  private emit(final: boolean): string {
    if (this.readOffset === this.ids.length) return '';
    const decode = (ids: number[]) => this.tokenizer.decode(ids, this.opts);
    const prefixText = decode(this.ids.slice(this.prefixOffset, this.readOffset));
    const fullText = decode(this.ids.slice(this.prefixOffset));
    if (!final && (fullText.length <= prefixText.length || fullText.endsWith('\uFFFD'))) return '';
    this.prefixOffset = this.readOffset;
    this.readOffset = this.ids.length;
    return fullText.slice(prefixText.length);
  }
}
