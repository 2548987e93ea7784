import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ChatTemplate, ChatTemplateError, renderAndEncode, type ChatMessage } from './chat_template.js';
import { makeLlama4Dir } from './fixture.js';
import { Tokenizer } from './tokenizer.js';

// llama4-spec.md §5.3
const GOLDEN = [
  200000, 200005, 15651, 200006, 368, 4662, 583, 262, 19933, 43910, 200008, 200005, 1556, 200006, 368, 3668,
  373, 220, 30, 23, 30, 43, 200008, 200005, 140680, 200006, 368,
];
const SYSTEM_USER: ChatMessage[] = [
  { role: 'system', content: 'You are a helpful assistant' },
  { role: 'user', content: 'What is 2+2?' },
];

describe('chat templates', () => {
  let fixture: { dir: string; remove: () => void };
  let tok: Tokenizer;
  let llama4: ChatTemplate;
  before(async () => {
    fixture = makeLlama4Dir();
    tok = await Tokenizer.load(fixture.dir);
    llama4 = ChatTemplate.resolve(tok, 'llama-4');
  });
  after(() => fixture?.remove());

  test('built-in llama-4 gives the §5.3 golden tokens', () => {
    const { prompt, ids } = renderAndEncode(tok, llama4, SYSTEM_USER, { addGenerationPrompt: true });
    assert.equal(
      prompt,
      '<|begin_of_text|><|header_start|>system<|header_end|>\n\nYou are a helpful assistant<|eot|>' +
        '<|header_start|>user<|header_end|>\n\nWhat is 2+2?<|eot|><|header_start|>assistant<|header_end|>\n\n',
    );
    assert.deepEqual(ids, GOLDEN);
  });

  test('no double BOS, whether or not the template writes it', () => {
    const count = (ids: number[]) => ids.filter((id) => id === 200000).length;
    const withBos = renderAndEncode(tok, llama4, SYSTEM_USER).ids;
    assert.equal(count(withBos), 1);
    const noBos = new ChatTemplate('{% for m in messages %}{{ m.content }}{% endfor %}');
    const ids = renderAndEncode(tok, noBos, SYSTEM_USER).ids;
    assert.equal(ids[0], 200000);
    assert.equal(count(ids), 1);
    const viaVariable = new ChatTemplate('{{ bos_token }}{{ messages[0].content }}{{ eos_token }}');
    const r = renderAndEncode(tok, viaVariable, SYSTEM_USER);
    assert.equal(r.prompt, '<|begin_of_text|>You are a helpful assistant<|eot|>');
    assert.equal(count(r.ids), 1);
  });

  test('no default system prompt; images, tool calls and tool results', () => {
    const text = llama4.render(
      [
        { role: 'user', content: [{ type: 'image_url', image_url: { url: 'data:,' } }, { type: 'text', text: 'Weather?' }] },
        {
          role: 'assistant',
          content: null,
          tool_calls: [{ id: 'c1', type: 'function', function: { name: 'get_weather', arguments: '{"city": "Paris"}' } }],
        },
        { role: 'tool', tool_call_id: 'c1', content: '{"temp": 21}' },
        { role: 'ipython', content: [{ type: 'text', text: 'done' }] },
      ],
      { addGenerationPrompt: true },
    );
    assert.equal(
      text,
      '<|begin_of_text|><|header_start|>user<|header_end|>\n\n<|image|>Weather?<|eot|>' +
        '<|header_start|>assistant<|header_end|>\n\n<|python_start|><|python_end|>' +
        '{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot|>' +
        '<|header_start|>ipython<|header_end|>\n\n{"temp": 21}<|eot|>' +
        '<|header_start|>ipython<|header_end|>\n\ndone<|eot|>' +
        '<|header_start|>assistant<|header_end|>\n\n',
    );
  });

  test('tools go to the first user message, or to the system turn', () => {
    const tools = [{ type: 'function', function: { name: 'f', parameters: { type: 'object' } } }];
    const inUser = llama4.render([{ role: 'system', content: 'S' }, { role: 'user', content: 'Q' }], { tools });
    assert.match(inUser, /^<\|begin_of_text\|><\|header_start\|>system<\|header_end\|>\n\nEnvironment: ipython\nS<\|eot\|>/);
    assert.match(inUser, /<\|header_start\|>user<\|header_end\|>\n\nGiven the following functions/);
    assert.ok(inUser.includes('"name": "f"') && inUser.endsWith('\n\nQ<|eot|>'));
    const inSystem = llama4.render([{ role: 'user', content: 'Q' }], { tools, kwargs: { tools_in_user_message: false } });
    assert.match(inSystem, /system<\|header_end\|>\n\nEnvironment: ipython\nYou have access to the following functions/);
    assert.ok(inSystem.endsWith('<|header_start|>user<|header_end|>\n\nQ<|eot|>'));
    assert.ok(!llama4.render([{ role: 'user', content: 'Q' }], { tools: [] }).includes('Environment'));
  });

  test('bad messages are ChatTemplateErrors with a clear message', () => {
    assert.throws(() => llama4.render([]), (e: Error) => e instanceof ChatTemplateError && /non-empty/.test(e.message));
    assert.throws(
      () => llama4.render([{ role: 'wizard', content: 'x' }]),
      (e: Error) => e instanceof ChatTemplateError && /messages\[0\]\.role .*"wizard"/.test(e.message),
    );
    assert.throws(
      () => llama4.render([{ role: 'user', content: [{ type: 'input_audio' }] }]),
      (e: Error) => e instanceof ChatTemplateError && /content\[0\]\.type/.test(e.message),
    );
    const raising = new ChatTemplate("{{ raise_exception('only user turns') }}");
    assert.throws(() => raising.render(SYSTEM_USER), (e: Error) => e instanceof ChatTemplateError && /only user turns/.test(e.message));
  });

  test('resolve: checkpoint template, template files, unknown names', () => {
    assert.throws(() => ChatTemplate.resolve(tok), /no chat template/);
    assert.throws(() => ChatTemplate.resolve(tok, 'llama-5'), /unknown chat template "llama-5"/);
    const jinja = join(fixture.dir, 'custom.jinja');
    writeFileSync(jinja, '{{ bos_token }}{{ messages[-1].content }}{% if add_generation_prompt %}!{% endif %}');
    const t = ChatTemplate.resolve(tok, jinja);
    assert.equal(renderAndEncode(tok, t, SYSTEM_USER, { addGenerationPrompt: true }).prompt, '<|begin_of_text|>What is 2+2?!');
    const json = join(fixture.dir, 'custom.json');
    writeFileSync(json, JSON.stringify({ chat_template: 'J{{ messages|length }}' }));
    assert.equal(ChatTemplate.resolve(tok, json).render(SYSTEM_USER), 'J2');
  });
});
