// Test fixtures: the real Llama 4 tokenizer (from the shared data checkout beside the repo)
// and a tiny byte-level BPE tokenizer built in memory for fast cases.
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  while (!existsSync(join(dir, 'package.json'))) {
    const up = dirname(dir);
    if (up === dir) throw new Error('cannot find the repository root (package.json)');
    dir = up;
  }
  return dir;
}

/** `<repo>/../shared/data/llama4`: CI clones the repo with shared/ beside it. */
export const LLAMA4_DATA = resolve(repoRoot(), '..', 'shared', 'data', 'llama4');

export function makeTempDir(): { dir: string; remove: () => void } {
  const dir = mkdtempSync(join(tmpdir(), 'tsglang-tok-'));
  return { dir, remove: () => rmSync(dir, { recursive: true, force: true }) };
}

/**
 * A checkpoint-like directory with the Llama 4 tokenizer.json (decompressed with `xz`) and
 * the tokenizer_config.json / generation_config.json values of the Instruct checkpoints.
 */
export function makeLlama4Dir(): { dir: string; remove: () => void } {
  const xzPath = join(LLAMA4_DATA, 'tokenizer.json.xz');
  if (!existsSync(xzPath)) {
    throw new Error(`missing ${xzPath}: the tokenizer tests need the shared data checkout beside the repo`);
  }
  const tmp = makeTempDir();
  writeFileSync(join(tmp.dir, 'tokenizer.json'), execFileSync('xz', ['-dc', xzPath], { maxBuffer: 1 << 30 }));
  writeJson(tmp.dir, 'tokenizer_config.json', {
    add_bos_token: true,
    bos_token: '<|begin_of_text|>',
    eos_token: '<|eot|>',
    pad_token: '<|finetune_right_pad_id|>', // not in this tokenizer: pad falls back to generation_config
    clean_up_tokenization_spaces: false,
  });
  writeJson(tmp.dir, 'generation_config.json', {
    bos_token_id: 200000,
    eos_token_id: [200001, 200007, 200008],
    pad_token_id: 200018,
  });
  return tmp;
}

export function readReference(): { text: string; ids: number[]; decoded_ok: boolean }[] {
  const path = join(LLAMA4_DATA, 'tokenizer_reference.json');
  if (!existsSync(path)) throw new Error(`missing ${path}: the tokenizer tests need the shared data checkout`);
  return JSON.parse(readFileSync(path, 'utf8'));
}

export function writeJson(dir: string, name: string, value: unknown): void {
  writeFileSync(join(dir, name), JSON.stringify(value));
}

// GPT-2's byte → printable character map used by byte-level BPE.
function byteChars(): string[] {
  const chars: string[] = [];
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
    chars.push(String.fromCodePoint(printable ? b : 256 + extra++));
  }
  return chars;
}

/**
 * A tiny byte-level BPE tokenizer.json: ids 0..255 are bytes, 256 = "ab", 257 = "Ġb",
 * specials <s> = 258, </s> = 259; the post-processor prepends <s> like HF Llama's does.
 */
export function tinyTokenizerJson(): Record<string, unknown> {
  const vocab: Record<string, number> = {};
  byteChars().forEach((c, i) => (vocab[c] = i));
  vocab['ab'] = 256;
  vocab['Ġb'] = 257;
  const special = (id: number, content: string) => ({
    id, content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true,
  });
  return {
    version: '1.0',
    added_tokens: [special(258, '<s>'), special(259, '</s>')],
    normalizer: null,
    pre_tokenizer: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 1 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [258], tokens: ['<s>'] } },
    },
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: { type: 'BPE', dropout: null, unk_token: null, fuse_unk: false, byte_fallback: false, vocab, merges: ['a b', 'Ġ b'] },
  };
}
