import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { IncrementalDetokenizer } from './detokenizer.js';
import { makeLlama4Dir } from './fixture.js';
import { Tokenizer } from './tokenizer.js';

describe('IncrementalDetokenizer (Llama 4)', () => {
  let fixture: { dir: string; remove: () => void };
  let tok: Tokenizer;
  before(async () => {
    fixture = makeLlama4Dir();
    tok = await Tokenizer.load(fixture.dir);
  });
  after(() => fixture?.remove());

  function stream(ids: number[], skipSpecialTokens = false): string[] {
    const d = new IncrementalDetokenizer(tok, { skipSpecialTokens });
    const pieces = ids.map((id) => d.push(id));
    pieces.push(d.flush());
    return pieces;
  }

  const texts = [
    'Emoji 🦙🔥👩‍👩‍👧‍👦 and flags 🇫🇷🇯🇵',
    '日本語のテキスト 龘靐齉爩 鱻 㐀㐁 丂丄 한국어 문장',
    '中文：饕餮、魑魅魍魉、犇羴',
    'Mixed: héllo 🌍 世界! Привет 👋🏽 — ∑x² ≤ ∞ 🇺🇳🇺🇳',
    '𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𓀀𓀁 🫠🫠🫠',
  ];

  for (const text of texts) {
    test(`no broken characters: ${text}`, () => {
      const ids = tok.encode(text, { addSpecialTokens: false });
      // Make sure the case is meaningful: some token ends inside a character.
      assert.ok(ids.some((id) => tok.decode([id]).includes('\uFFFD')), 'expected split characters');
      const pieces = stream(ids);
      for (const p of pieces) assert.ok(!p.includes('\uFFFD'), `broken piece ${JSON.stringify(p)}`);
      assert.equal(pieces.join(''), text);
      assert.equal(pieces.join(''), tok.decode(ids));
    });
  }

  test('special tokens are kept or skipped; unknown ids give nothing', () => {
    const ids = [200000, ...tok.encode('Hi 🦙', { addSpecialTokens: false }), 202047, 202048, 200008];
    assert.equal(stream(ids).join(''), tok.decode(ids));
    assert.equal(stream(ids, true).join(''), 'Hi 🦙');
  });

  test('a character cut off at the end comes out at flush, as decode gives it', () => {
    const ids = tok.encode('ok 🦙', { addSpecialTokens: false });
    const cut = ids.slice(0, -1); // the llama emoji spans several tokens
    const pieces = stream(cut);
    assert.ok(!pieces.slice(0, -1).join('').includes('\uFFFD'));
    assert.equal(pieces.join(''), tok.decode(cut));
  });
});
