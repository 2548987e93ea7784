import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import * as fsp from 'node:fs/promises';
import * as os from 'node:os';
import * as path from 'node:path';
import { selectRef } from '../../test/model/select_ref.js';
import { Checkpoint, writeSafetensors, writeShardedCheckpoint, type TensorToWrite } from './safetensors.js';

let tmp = '';
before(async () => { tmp = await fsp.mkdtemp(path.join(os.tmpdir(), 'tsglang-st-')); });
after(async () => { await fsp.rm(tmp, { recursive: true, force: true }); });

const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
let n = 0;
/** A fresh empty directory per test. */
async function newDir(): Promise<string> {
  const d = path.join(tmp, `t${n++}`);
  await fsp.mkdir(d);
  return d;
}

// Values chosen to be exact in their dtype, with the known encodings from the brief.
const TENSORS: TensorToWrite[] = [
  { name: 'bf16', dtype: 'BF16', shape: [2, 2], data: bytesOf(new Uint16Array([0x3f80, 0xc000, 0x0000, 0x4040])) },
  { name: 'f16', dtype: 'F16', shape: [3], data: bytesOf(new Uint16Array([0x3c00, 0x7bff, 0xb800])) },
  { name: 'f32', dtype: 'F32', shape: [4, 3], data: bytesOf(Float32Array.from({ length: 12 }, (_, i) => i * 0.5 - 1)) },
  { name: 'e4m3', dtype: 'F8_E4M3', shape: [5], data: new Uint8Array([0x7e, 0x38, 0x01, 0x7f, 0xb8]) },
  { name: 'i64', dtype: 'I64', shape: [1, 2], data: bytesOf(new BigInt64Array([-5n, 1n << 33n])) },
];
const F32_OF: Record<string, number[]> = {
  bf16: [1, -2, 0, 3],
  f16: [1, 65504, -0.5],
  f32: Array.from({ length: 12 }, (_, i) => i * 0.5 - 1),
  e4m3: [448, 1, 2 ** -9, NaN, -1],
  i64: [-5, 2 ** 33],
};

async function checkAll(ck: Checkpoint): Promise<void> {
  assert.deepEqual(ck.names().sort(), TENSORS.map((t) => t.name).sort());
  for (const t of TENSORS) {
    assert.ok(ck.has(t.name));
    const info = ck.info(t.name);
    assert.equal(info.dtype, t.dtype);
    assert.deepEqual(info.shape, t.shape);
    assert.equal(info.byteLength, t.data.byteLength);
    assert.deepEqual(await ck.read(t.name), new Uint8Array(t.data));
    assert.deepEqual([...await ck.readF32(t.name, t.shape)], F32_OF[t.name]);
  }
}

/** Write a file from a raw header (object or literal text) and data bytes. */
async function rawFile(file: string, header: unknown, data = new Uint8Array(0)): Promise<string> {
  const json = Buffer.from(typeof header === 'string' ? header : JSON.stringify(header));
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));
  await fsp.writeFile(file, Buffer.concat([len, json, data]));
  return file;
}

async function rejectsWith(p: Promise<unknown>, ...parts: string[]): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof Error);
    for (const s of parts) assert.ok(e.message.includes(s), `'${e.message}' should contain '${s}'`);
    return true;
  });
}

test('single file round trip: by file path and by directory', async () => {
  const dir = await newDir();
  const file = path.join(dir, 'model.safetensors');
  await writeSafetensors(file, TENSORS, { format: 'pt' });
  const raw = await fsp.readFile(file);
  const headerLen = Number(raw.readBigUInt64LE(0));
  assert.equal(headerLen % 8, 0);
  assert.equal(raw[8 + headerLen - 1], 0x20); // padded with spaces (here at least one)
  for (const p of [file, dir]) {
    const ck = await Checkpoint.open(p);
    assert.deepEqual(ck.metadata, { format: 'pt' });
    assert.equal(ck.info('bf16').offset, 8 + headerLen); // tensors in the given order
    assert.equal(ck.info('bf16').file, file);
    await checkAll(ck);
    await ck.close();
  }
});

test('sharded checkpoint with index: several shards, readSlice', async () => {
  const dir = await newDir();
  const files = await writeShardedCheckpoint(dir, TENSORS, 16);
  assert.equal(files.length, 4); // [bf16 f16] [f32] [e4m3] [i64]
  assert.equal(path.basename(files[0]!), `model-00001-of-0000${files.length}.safetensors`);
  const index = JSON.parse(await fsp.readFile(path.join(dir, 'model.safetensors.index.json'), 'utf8'));
  assert.equal(index.weight_map.f32, path.basename(files[1]!)); // 48 bytes > 16: a shard of its own
  const ck = await Checkpoint.open(dir);
  await checkAll(ck);
  assert.notEqual(ck.info('bf16').file, ck.info('f32').file);
  // f32 is [4, 3] with values i*0.5-1: rows 1..2 are elements 3..8.
  const rows = new Float32Array((await ck.readSlice('f32', 1, 2)).buffer);
  assert.deepEqual([...rows], F32_OF.f32!.slice(3, 9));
  assert.equal((await ck.readSlice('f32', 4, 0)).byteLength, 0);
  await rejectsWith(ck.readSlice('f32', 3, 2), 'f32', files[1]!, 'out of range');
  await ck.close();
});

test('several *.safetensors without an index; duplicates across shards are rejected', async () => {
  const dir = await newDir();
  await writeSafetensors(path.join(dir, 'a.safetensors'), TENSORS.slice(0, 2));
  await writeSafetensors(path.join(dir, 'b.safetensors'), TENSORS.slice(2));
  const ck = await Checkpoint.open(dir);
  await checkAll(ck);
  await ck.close();
  await writeSafetensors(path.join(dir, 'c.safetensors'), TENSORS.slice(1, 2));
  await rejectsWith(Checkpoint.open(dir), "'f16'", 'a.safetensors', 'c.safetensors');
});

test('unknown tensor names the tensor, the directory and close names', async () => {
  const dir = await newDir();
  await writeSafetensors(path.join(dir, 'model.safetensors'), TENSORS);
  const ck = await Checkpoint.open(dir);
  assert.throws(() => ck.info('bf15'), (e: Error) => e.message.includes("'bf15'") && e.message.includes(dir) && e.message.includes('bf16'));
  assert.throws(() => ck.info('completely.different.name'), /not found/);
  await rejectsWith(ck.readF32('f32', [3, 4]), "'f32'", 'model.safetensors', '[4, 3]', '[3, 4]');
  await ck.close();
});

test('truncated file: error names the file and the tensor past the end', async () => {
  const dir = await newDir();
  const file = path.join(dir, 'model.safetensors');
  await writeSafetensors(file, TENSORS);
  const { size } = await fsp.stat(file);
  await fsp.truncate(file, size - 3);
  await rejectsWith(Checkpoint.open(file), file, "'i64'", 'truncated');
});

test('header errors name the file', async () => {
  const dir = await newDir();
  const f = (name: string) => path.join(dir, name);

  await fsp.writeFile(f('short.safetensors'), new Uint8Array(4));
  await rejectsWith(Checkpoint.open(f('short.safetensors')), 'short.safetensors', 'shorter than');

  await writeSafetensors(f('biglen.safetensors'), TENSORS);
  const fh = await fsp.open(f('biglen.safetensors'), 'r+');
  await fh.write(new Uint8Array([0xff, 0xff, 0, 0, 0, 0, 0, 0x01]), 0, 8, 0);
  await fh.close();
  await rejectsWith(Checkpoint.open(f('biglen.safetensors')), 'biglen.safetensors', 'larger than the file');

  await rawFile(f('nojson.safetensors'), '{"a": [1, 2');
  await rejectsWith(Checkpoint.open(f('nojson.safetensors')), 'nojson.safetensors', 'not valid JSON');

  await rawFile(f('array.safetensors'), '[1, 2]');
  await rejectsWith(Checkpoint.open(f('array.safetensors')), 'array.safetensors', 'not a JSON object');
});

test('tensor entry errors name the file and the tensor', async () => {
  const dir = await newDir();
  const cases: [string, unknown, string][] = [
    ['dtype', { dtype: 'Q4_K', shape: [2], data_offsets: [0, 2] }, 'unknown dtype'],
    ['offs', { dtype: 'U8', shape: [2], data_offsets: [0] }, 'data_offsets'],
    ['frac', { dtype: 'U8', shape: [2], data_offsets: [0, 1.5] }, 'data_offsets'],
    ['backwards', { dtype: 'U8', shape: [2], data_offsets: [2, 0] }, 'end 0 < begin 2'],
    ['size', { dtype: 'F32', shape: [2], data_offsets: [0, 4] }, 'needs 8'],
    ['shape', { dtype: 'U8', shape: [-1], data_offsets: [0, 0] }, 'shape'],
    ['past', { dtype: 'U8', shape: [8], data_offsets: [4, 12] }, 'truncated'],
  ];
  for (const [name, entry, msg] of cases) {
    const file = await rawFile(path.join(dir, `${name}.safetensors`), { [name]: entry }, new Uint8Array(8));
    await rejectsWith(Checkpoint.open(file), file, `'${name}'`, msg);
  }
});

test('index errors: missing shard, malformed index, tensor not in its shard', async () => {
  const dir = await newDir();
  await writeShardedCheckpoint(dir, TENSORS, 16);
  const indexPath = path.join(dir, 'model.safetensors.index.json');
  const index = JSON.parse(await fsp.readFile(indexPath, 'utf8'));

  await fsp.writeFile(indexPath, JSON.stringify({ weight_map: { ...index.weight_map, extra: 'model-00009-of-00009.safetensors' } }));
  await rejectsWith(Checkpoint.open(dir), 'model.safetensors.index.json', 'model-00009-of-00009.safetensors', 'missing');

  await fsp.writeFile(indexPath, JSON.stringify({ weight_map: { ...index.weight_map, extra: index.weight_map.f32 } }));
  await rejectsWith(Checkpoint.open(dir), 'model.safetensors.index.json', "'extra'");

  await fsp.writeFile(indexPath, '{"weight_map": ');
  await rejectsWith(Checkpoint.open(dir), 'model.safetensors.index.json', 'not valid JSON');

  await fsp.writeFile(indexPath, JSON.stringify({ weight_map: [1] }));
  await rejectsWith(Checkpoint.open(dir), 'model.safetensors.index.json', 'malformed');
});

test('missing path and empty directory', async () => {
  const dir = await newDir();
  await rejectsWith(Checkpoint.open(path.join(dir, 'nope')), 'nope', 'does not exist');
  await rejectsWith(Checkpoint.open(dir), dir, 'no model.safetensors.index.json');
});

test('writeSafetensors rejects data that does not match the shape', async () => {
  const dir = await newDir();
  await rejectsWith(writeSafetensors(path.join(dir, 'x.safetensors'), [{ name: 'w', dtype: 'F32', shape: [3], data: new Uint8Array(8) }]),
    'x.safetensors', "'w'", 'needs 12');
});

test('readSelection reads only the selected bytes, one read per run of adjacent bytes', async () => {
  const dir = await newDir();
  const shape = [3, 4, 5];
  const pad = { name: 'pad', dtype: 'U8' as const, shape: [7], data: new Uint8Array(7).fill(0xee) };
  const data = Uint8Array.from({ length: 3 * 4 * 5 * 2 }, (_, i) => (i * 7) & 0xff);
  await writeSafetensors(path.join(dir, 'model.safetensors'), [pad, { name: 'x', dtype: 'BF16', shape, data }]);
  const ck = await Checkpoint.open(dir);
  // [selection, result shape, read calls]
  const cases: [Record<number, [number, number][]>, number[], number][] = [
    [{}, [3, 4, 5], 1],
    [{ 0: [[1, 2]] }, [2, 4, 5], 1], // outer rows: one run
    [{ 0: [[2, 1], [0, 1]] }, [2, 4, 5], 2], // in the order given
    [{ 1: [[1, 2]] }, [3, 2, 5], 3], // one run per outer row
    [{ 2: [[0, 2], [2, 3]] }, [3, 4, 5], 1], // ranges that meet make the whole dim
    [{ 2: [[3, 2], [0, 1]] }, [3, 4, 3], 24], // two runs per row, none touching
    [{ 0: [[1, 1]], 1: [[2, 2]] }, [1, 2, 5], 1],
    [{ 0: [[0, 2]], 2: [[1, 2]] }, [2, 4, 2], 8],
    [{ 1: [[0, 0]] }, [3, 0, 5], 0],
  ];
  for (const [sel, wantShape, wantCalls] of cases) {
    const before = { bytes: ck.bytesRead, calls: ck.readCalls };
    const got = await ck.readSelection('x', sel);
    const what = JSON.stringify(sel);
    assert.equal(got.dtype, 'BF16');
    assert.deepEqual(got.shape, wantShape, what);
    assert.deepEqual(got.data, selectRef(data, shape, 2, sel), what);
    assert.equal(ck.bytesRead - before.bytes, got.data.byteLength, `${what}: bytes read`);
    assert.equal(ck.readCalls - before.calls, wantCalls, `${what}: read calls`);
  }
  await rejectsWith(ck.readSelection('x', { 3: [[0, 1]] }), "'x'", 'dim 3');
  await rejectsWith(ck.readSelection('x', { 1: [[3, 2]] }), "'x'", 'out of range', '[3, 4, 5]');
  await ck.close();
});

test('readSelection: runs of a MiB and more (async reads) and short ones (sync reads) agree with the reference', async () => {
  const dir = await newDir();
  const shape = [3, 3 << 19]; // rows of 1.5 MiB
  const data = Uint8Array.from({ length: shape[0]! * shape[1]! }, (_, i) => (i * 31 + (i >> 11)) & 0xff);
  await writeSafetensors(path.join(dir, 'model.safetensors'), [{ name: 'big', dtype: 'U8', shape, data }]);
  const ck = await Checkpoint.open(dir);
  for (const sel of [{ 0: [[1, 2]] }, { 1: [[5, 1 << 20]] }, { 1: [[100, 1000], [1 << 19, 1 << 18]] }] as Record<number, [number, number][]>[]) {
    const before = ck.bytesRead;
    const got = await ck.readSelection('big', sel);
    const rows = sel[0] ?? [[0, shape[0]!]];
    const cols = sel[1] ?? [[0, shape[1]!]];
    const want = rows.flatMap(([r0, nr]) => Array.from({ length: nr }, (_, i) => r0 + i))
      .flatMap((r) => cols.map(([c0, nc]) => data.subarray(r * shape[1]! + c0, r * shape[1]! + c0 + nc)));
    assert.ok(Buffer.from(got.data).equals(Buffer.concat(want)), JSON.stringify(sel));
    assert.equal(ck.bytesRead - before, got.data.byteLength);
  }
  await ck.close();
});
