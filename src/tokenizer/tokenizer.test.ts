import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { makeLlama4Dir, makeTempDir, readReference, tinyTokenizerJson, writeJson } from './fixture.js';
import { Tokenizer } from './tokenizer.js';

describe('Llama 4 tokenizer', () => {
  let fixture: { dir: string; remove: () => void };
  let tok: Tokenizer;
  before(async () => {
    fixture = makeLlama4Dir();
    tok = await Tokenizer.load(fixture.dir); // ~1.5 s: once for the file
  });
  after(() => fixture?.remove());

  test('ids equal tiktoken for every reference string', () => {
    const ref = readReference();
    assert.equal(ref.length, 30);
    for (const r of ref) {
      const ids = tok.encode(r.text, { addSpecialTokens: false });
      assert.deepEqual(ids, r.ids, `encode ${JSON.stringify(r.text)}`);
      if (r.decoded_ok) assert.equal(tok.decode(ids), r.text, `decode ${JSON.stringify(r.text)}`);
    }
  });

  test('special ids, BOS, EOS and pad', () => {
    assert.equal(tok.bosId, 200000);
    assert.equal(tok.bosToken, '<|begin_of_text|>');
    assert.deepEqual(tok.eosIds, [200001, 200007, 200008]);
    assert.equal(tok.padId, 200018);
    assert.equal(tok.vocabSize, 202048);
    const specials: Record<string, number> = {
      '<|end_of_text|>': 200001, '<|header_start|>': 200005, '<|header_end|>': 200006, '<|eom|>': 200007,
      '<|eot|>': 200008, '<|python_start|>': 200016, '<|python_end|>': 200017, '<|finetune_right_pad|>': 200018,
      '<|image_start|>': 200080, '<|image_end|>': 200081, '<|tile_x_separator|>': 200084,
      '<|tile_y_separator|>': 200085, '<|image|>': 200090, '<|patch|>': 200092,
    };
    for (const [s, id] of Object.entries(specials)) {
      assert.equal(tok.tokenToId(s), id, s);
      assert.equal(tok.idToToken(id), s);
      assert.ok(tok.isSpecial(id), s);
    }
    assert.ok(!tok.isSpecial(19873));
    assert.equal(tok.tokenToId('no such token'), undefined);
  });

  test('addSpecialTokens prepends one BOS (add_bos_token), false gives raw ids', () => {
    assert.deepEqual(tok.encode('Hello, world!'), [200000, 19873, 24, 3817, 13]);
    assert.deepEqual(tok.encode('Hello, world!', { addSpecialTokens: false }), [19873, 24, 3817, 13]);
  });

  test('ids beyond the tokenizer decode to empty text', () => {
    assert.equal(tok.decode([202048]), '');
    assert.equal(tok.decode([19873, 250000, -1, 24]), 'Hello,');
    assert.equal(tok.decode([]), '');
    assert.equal(tok.idToToken(202048), undefined);
  });

  test('skipSpecialTokens drops special tokens', () => {
    const ids = [200000, 19873, 24, 3817, 13, 200008];
    assert.equal(tok.decode(ids), '<|begin_of_text|>Hello, world!<|eot|>');
    assert.equal(tok.decode(ids, { skipSpecialTokens: true }), 'Hello, world!');
  });
});

describe('Tokenizer.load', () => {
  let tmp: { dir: string; remove: () => void };
  before(() => (tmp = makeTempDir()));
  after(() => tmp.remove());

  test('a missing or invalid tokenizer.json is an error naming the file', async () => {
    const path = join(tmp.dir, 'tokenizer.json');
    await assert.rejects(Tokenizer.load(tmp.dir), (e: Error) => e.message.includes(path));
    writeFileSync(path, '{ not json');
    await assert.rejects(Tokenizer.load(tmp.dir), (e: Error) => e.message.includes(path));
    writeFileSync(path, '{"version": "1.0"}');
    await assert.rejects(Tokenizer.load(tmp.dir), (e: Error) => e.message.includes(path));
  });

  test('tokenizerPath, post-processor BOS, add_bos_token=false, eos as int', async () => {
    const file = join(tmp.dir, 'tiny.json');
    writeFileSync(file, JSON.stringify(tinyTokenizerJson()));
    writeJson(tmp.dir, 'special_tokens_map.json', { bos_token: { content: '<s>' }, eos_token: '</s>' });
    writeJson(tmp.dir, 'generation_config.json', { eos_token_id: 259 });
    let tok = await Tokenizer.load(tmp.dir, { tokenizerPath: file });
    assert.equal(tok.vocabSize, 260);
    assert.equal(tok.bosId, 258);
    assert.deepEqual(tok.eosIds, [259]);
    assert.equal(tok.padId, undefined);
    assert.deepEqual(tok.encode('ab b'), [258, 256, 257]); // BOS from the post-processor
    assert.deepEqual(tok.encode('ab b', { addSpecialTokens: false }), [256, 257]);
    assert.equal(tok.decode([258, 256, 257, 259, 300]), '<s>ab b</s>');
    assert.equal(tok.chatTemplate, undefined);

    writeJson(tmp.dir, 'tokenizer_config.json', { add_bos_token: false, chat_template: 'from config' });
    tok = await Tokenizer.load(tmp.dir, { tokenizerPath: file });
    assert.deepEqual(tok.encode('ab b'), [256, 257]);
    assert.equal(tok.chatTemplate, 'from config');
  });

  test('chat template precedence: .jinja, then chat_template.json, then tokenizer_config', async () => {
    const file = join(tmp.dir, 'tiny.json');
    writeJson(tmp.dir, 'tokenizer_config.json', { chat_template: [{ name: 'default', template: 'config' }] });
    assert.equal((await Tokenizer.load(tmp.dir, { tokenizerPath: file })).chatTemplate, 'config');
    writeJson(tmp.dir, 'chat_template.json', { chat_template: 'json' });
    assert.equal((await Tokenizer.load(tmp.dir, { tokenizerPath: file })).chatTemplate, 'json');
    writeFileSync(join(tmp.dir, 'chat_template.jinja'), 'jinja');
    assert.equal((await Tokenizer.load(tmp.dir, { tokenizerPath: file })).chatTemplate, 'jinja');
  });
});
