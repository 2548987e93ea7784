// Loads a Hugging Face tokenizer directory (tokenizer.json + optional configs) and exposes
// the ids the engine needs. BPE itself is done by @huggingface/tokenizers (pure JS).
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Tokenizer as HfTokenizer } from '@huggingface/tokenizers';

type Json = Record<string, unknown>;

export interface EncodeOptions {
  /** Add the tokenizer's special tokens (BOS for Llama). Default true. */
  addSpecialTokens?: boolean;
}

export interface DecodeOptions {
  skipSpecialTokens?: boolean;
}

export class Tokenizer {
  /** Number of ids the tokenizer knows (the model's embedding may have more rows). */
  readonly vocabSize: number;
  readonly bosId: number | undefined;
  readonly bosToken: string | undefined;
  /** Ids that end generation: generation_config's eos_token_id ∪ the tokenizer's eos token. */
  readonly eosIds: number[];
  readonly eosToken: string | undefined;
  readonly padId: number | undefined;
  /** The checkpoint's own chat template, if it ships one. */
  readonly chatTemplate: string | undefined;

  private readonly specialIds: Set<number>;
  // Set when we split decoding at added tokens ourselves (see constructor).
  private readonly addedIds: Set<number> | undefined;
  // Whether tokenizer.json's post-processor already prepends BOS, and what the config asks.
  private readonly postProcessorAddsBos: boolean;
  private readonly addBosToken: boolean | undefined;
  private readonly cleanUpSpaces: boolean;

  private constructor(
    private readonly hf: HfTokenizer,
    tokenizerJson: Json,
    config: Json,
    specialMap: Json,
    genConfig: Json,
    chatTemplate: string | undefined,
  ) {
    const vocab = (hf as unknown as { model: { vocab: (string | undefined)[] } }).model.vocab;
    this.vocabSize = vocab.length;
    const added = (tokenizerJson.added_tokens ?? []) as { id: number; special?: boolean }[];
    this.specialIds = new Set(added.filter((t) => t.special).map((t) => t.id));
    // The library's ByteLevel decoder scans every added token for each token it decodes
    // (~5 µs/token with Llama 4's 2048 specials). Splitting at added tokens here gives the
    // same text without the scan.
    const decoder = (hf as unknown as { decoder: { added_tokens: unknown[] } | null }).decoder;
    if ((tokenizerJson.decoder as Json | null)?.type === 'ByteLevel' && decoder) {
      decoder.added_tokens = [];
      this.addedIds = new Set(added.map((t) => t.id));
    }

    const id = (tok: unknown) => {
      const s = tokenString(tok);
      return s === undefined ? undefined : this.tokenToId(s);
    };
    this.bosId = id(config.bos_token) ?? id(specialMap.bos_token) ?? intOr(genConfig.bos_token_id);
    this.bosToken = this.bosId === undefined ? undefined : this.idToToken(this.bosId);
    const tokEos = id(config.eos_token) ?? id(specialMap.eos_token);
    const genEos = ([] as unknown[]).concat(genConfig.eos_token_id ?? []).filter(isInt);
    this.eosIds = [...new Set([...genEos, ...(tokEos === undefined ? [] : [tokEos])])].sort((a, b) => a - b);
    this.eosToken = tokEos === undefined ? undefined : this.idToToken(tokEos);
    this.padId = id(config.pad_token) ?? id(specialMap.pad_token) ?? intOr(genConfig.pad_token_id);
    this.chatTemplate = chatTemplate;

    this.addBosToken = typeof config.add_bos_token === 'boolean' ? config.add_bos_token : undefined;
    this.cleanUpSpaces = config.clean_up_tokenization_spaces === true;
    this.postProcessorAddsBos =
      this.bosId !== undefined && hf.encode('', { add_special_tokens: true }).ids[0] === this.bosId;
  }

  static async load(dir: string, opts: { tokenizerPath?: string } = {}): Promise<Tokenizer> {
    const path = opts.tokenizerPath ?? join(dir, 'tokenizer.json');
    let text: string;
    try {
      text = await readFile(path, 'utf8');
    } catch (e) {
      throw new Error(`cannot read tokenizer file ${path}: ${(e as Error).message}`);
    }
    let tokenizerJson: Json;
    try {
      tokenizerJson = JSON.parse(text) as Json;
    } catch (e) {
      throw new Error(`invalid JSON in tokenizer file ${path}: ${(e as Error).message}`);
    }
    if (typeof tokenizerJson !== 'object' || tokenizerJson === null || !tokenizerJson.model) {
      throw new Error(`invalid tokenizer file ${path}: no "model" section`);
    }
    const [config, specialMap, genConfig, templateJson, templateJinja] = await Promise.all([
      readOptionalJson(join(dir, 'tokenizer_config.json')),
      readOptionalJson(join(dir, 'special_tokens_map.json')),
      readOptionalJson(join(dir, 'generation_config.json')),
      readOptionalJson(join(dir, 'chat_template.json')),
      readFile(join(dir, 'chat_template.jinja'), 'utf8').catch(() => undefined),
    ]);
    let hf: HfTokenizer;
    try {
      // The library wants these keys present even when tokenizer.json leaves them out.
      const full = { normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, added_tokens: [], ...tokenizerJson };
      hf = new HfTokenizer(full, { ...config, clean_up_tokenization_spaces: false });
    } catch (e) {
      throw new Error(`unsupported tokenizer file ${path}: ${(e as Error).message}`);
    }
    // Same precedence as transformers: a standalone template file beats tokenizer_config.json.
    const template =
      templateJinja ?? pickTemplate(templateJson.chat_template) ?? pickTemplate(config.chat_template);
    return new Tokenizer(hf, tokenizerJson, config, specialMap, genConfig, template);
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    const addSpecial = opts.addSpecialTokens ?? true;
    const ids = this.hf.encode(text, { add_special_tokens: addSpecial }).ids;
    if (!addSpecial || this.bosId === undefined) return ids;
    // tokenizer_config's add_bos_token overrides what the post-processor does.
    if (this.addBosToken === true && !this.postProcessorAddsBos) ids.unshift(this.bosId);
    if (this.addBosToken === false && this.postProcessorAddsBos && ids[0] === this.bosId) ids.shift();
    return ids;
  }

  decode(ids: readonly number[], opts: DecodeOptions = {}): string {
    // Unknown ids (the embedding has more rows than the tokenizer) render as nothing.
    const known = ids.filter(
      (id) => this.idToToken(id) !== undefined && !(opts.skipSpecialTokens && this.specialIds.has(id)),
    );
    if (this.addedIds === undefined) return this.decodeRun(known);
    let text = '';
    let start = 0;
    for (let i = 0; i <= known.length; i++) {
      if (i < known.length && !this.addedIds.has(known[i])) continue;
      text += this.decodeRun(known.slice(start, i));
      if (i < known.length) text += this.idToToken(known[i]);
      start = i + 1;
    }
    return text;
  }

  private decodeRun(ids: number[]): string {
    if (ids.length === 0) return '';
    return this.hf.decode(ids, { clean_up_tokenization_spaces: this.cleanUpSpaces });
  }

  tokenToId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) return undefined;
    return this.hf.id_to_token(id) ?? undefined;
  }

  isSpecial(id: number): boolean {
    return this.specialIds.has(id);
  }
}

async function readOptionalJson(path: string): Promise<Json> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch {
    return {};
  }
  try {
    return JSON.parse(text) as Json;
  } catch (e) {
    throw new Error(`invalid JSON in ${path}: ${(e as Error).message}`);
  }
}

// Special tokens appear either as plain strings or as AddedToken objects {content: ...}.
function tokenString(tok: unknown): string | undefined {
  if (typeof tok === 'string') return tok;
  if (tok && typeof tok === 'object' && typeof (tok as Json).content === 'string') return (tok as Json).content as string;
  return undefined;
}

// chat_template may be a string or a list of named templates; take the default one.
function pickTemplate(t: unknown): string | undefined {
  if (typeof t === 'string') return t;
  if (Array.isArray(t)) {
    const named = t as { name?: string; template?: string }[];
    return (named.find((x) => x.name === 'default') ?? named[0])?.template;
  }
  return undefined;
}

function isInt(x: unknown): x is number {
  return Number.isInteger(x);
}

function intOr(x: unknown): number | undefined {
  return isInt(x) ? x : undefined;
}
