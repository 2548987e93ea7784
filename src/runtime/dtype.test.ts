import { test } from 'node:test';
import assert from 'node:assert/strict';
import { bf16ToFloat32, dtypeBytes, float32ToBf16, toFloat32 } from './dtype.js';

const bytesOf = (a: ArrayBufferView) => new Uint8Array(a.buffer, a.byteOffset, a.byteLength);
/** The same bytes at an odd byte offset, to exercise the copy path. */
function unaligned(b: Uint8Array): Uint8Array {
  const buf = new Uint8Array(b.length + 1);
  buf.set(b, 1);
  return buf.subarray(1);
}

test('dtypeBytes', () => {
  assert.deepEqual(
    (['BF16', 'F16', 'F32', 'F64', 'F8_E4M3', 'F8_E5M2', 'I8', 'U8', 'I16', 'I32', 'I64', 'BOOL'] as const).map(dtypeBytes),
    [2, 2, 4, 8, 1, 1, 1, 1, 2, 4, 8, 1]);
});

test('BF16 known encodings, aligned and unaligned', () => {
  const b = bytesOf(new Uint16Array([0x3f80, 0xc000, 0x0000, 0x8000, 0x7f80, 0x0001]));
  const want = [1, -2, 0, -0, Infinity, 2 ** -133];
  assert.deepEqual([...toFloat32(b, 'BF16')], want);
  assert.deepEqual([...toFloat32(unaligned(b), 'BF16')], want);
  assert.ok(Number.isNaN(toFloat32(bytesOf(new Uint16Array([0x7fc0])), 'BF16')[0]));
  assert.throws(() => toFloat32(new Uint8Array(3), 'BF16'), /multiple of 2/);
});

test('F16 known encodings', () => {
  const b = bytesOf(new Uint16Array([0x3c00, 0x7bff, 0xc000, 0x0001, 0x0400, 0xfc00, 0x8000]));
  const want = [1, 65504, -2, 2 ** -24, 2 ** -14, -Infinity, -0];
  assert.deepEqual([...toFloat32(b, 'F16')], want);
  assert.deepEqual([...toFloat32(unaligned(b), 'F16')], want);
  assert.ok(Number.isNaN(toFloat32(bytesOf(new Uint16Array([0x7e00])), 'F16')[0]));
});

test('F8_E4M3 (OCP fn): max 448, subnormals, NaN, no infinities', () => {
  const out = toFloat32(new Uint8Array([0x7e, 0x38, 0x01, 0x08, 0xfe, 0x80, 0x78, 0x7f, 0xff]), 'F8_E4M3');
  assert.deepEqual([...out.subarray(0, 7)], [448, 1, 2 ** -9, 2 ** -6, -448, -0, 256]);
  assert.ok(Number.isNaN(out[7]) && Number.isNaN(out[8]));
  const all = toFloat32(Uint8Array.from({ length: 256 }, (_, i) => i), 'F8_E4M3');
  assert.equal(all.filter(Number.isNaN).length, 2);
  assert.ok(all.every((v) => Number.isNaN(v) || Math.abs(v) <= 448));
});

test('F8_E5M2 known encodings', () => {
  const out = toFloat32(new Uint8Array([0x3c, 0x7b, 0x01, 0x7c, 0xfc, 0xc0]), 'F8_E5M2');
  assert.deepEqual([...out], [1, 57344, 2 ** -16, Infinity, -Infinity, -2]);
  assert.ok(Number.isNaN(toFloat32(new Uint8Array([0x7d]), 'F8_E5M2')[0]));
});

test('F32, F64 and integer types, unaligned too', () => {
  const f32 = bytesOf(new Float32Array([1.5, -3, 1e-30]));
  assert.deepEqual([...toFloat32(unaligned(f32), 'F32')], [...new Float32Array([1.5, -3, 1e-30])]);
  // F32 result is a copy, not a view of the input.
  const copy = toFloat32(f32, 'F32');
  copy[0] = 7;
  assert.equal(new Float32Array(f32.buffer)[0], 1.5);
  assert.deepEqual([...toFloat32(unaligned(bytesOf(new Float64Array([0.5, -1e300]))), 'F64')], [0.5, -Infinity]);
  assert.deepEqual([...toFloat32(bytesOf(new Int8Array([-128, 127])), 'I8')], [-128, 127]);
  assert.deepEqual([...toFloat32(new Uint8Array([0, 255]), 'U8')], [0, 255]);
  assert.deepEqual([...toFloat32(unaligned(bytesOf(new Int16Array([-32768, 5]))), 'I16')], [-32768, 5]);
  assert.deepEqual([...toFloat32(unaligned(bytesOf(new Int32Array([-7, 1 << 20]))), 'I32')], [-7, 1 << 20]);
  assert.deepEqual([...toFloat32(unaligned(bytesOf(new BigInt64Array([-3n, 1n << 40n]))), 'I64')], [-3, 2 ** 40]);
  assert.deepEqual([...toFloat32(new Uint8Array([0, 1, 2]), 'BOOL')], [0, 1, 1]);
});

test('float32ToBf16 rounds to nearest, ties to even', () => {
  const f = new Float32Array([
    1, -2,
    1 + 2 ** -8,            // halfway 0x3f80/0x3f81 → even 0x3f80
    1 + 3 * 2 ** -8,        // halfway 0x3f81/0x3f82 → even 0x3f82
    1 + 2 ** -8 + 2 ** -20, // just above halfway → 0x3f81
    1 + 2 ** -8 - 2 ** -20, // just below halfway → 0x3f80
    -(1 + 3 * 2 ** -8),     // sign is symmetric → 0xbf82
    3.4028234663852886e38,  // fp32 max rounds up to +Inf
    Infinity, -0,
  ]);
  assert.deepEqual([...float32ToBf16(f)], [0x3f80, 0xc000, 0x3f80, 0x3f82, 0x3f81, 0x3f80, 0xbf82, 0x7f80, 0x7f80, 0x8000]);
});

test('float32ToBf16 keeps NaN NaN, even a payload only in the low bits', () => {
  const f = new Float32Array(new Uint32Array([0x7fc00000, 0x7f800001, 0xff800001]).buffer);
  const h = float32ToBf16(f);
  assert.ok([...bf16ToFloat32(h)].every(Number.isNaN));
  assert.equal(h[2]! & 0x8000, 0x8000); // sign kept
});

test('every non-NaN bf16 survives bf16 → f32 → bf16', () => {
  const all = Uint16Array.from({ length: 65536 }, (_, i) => i);
  const back = float32ToBf16(bf16ToFloat32(all));
  for (let i = 0; i < 65536; i++) {
    if ((i & 0x7fff) > 0x7f80) continue; // NaNs: checked above
    assert.equal(back[i], i);
  }
});
