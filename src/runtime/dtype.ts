// Element types as named by safetensors, and fast conversion of raw little-endian bytes to fp32.
// Converters work on views where the byte offset allows it and copy only when it does not.

export type DType =
  | 'BF16' | 'F16' | 'F32' | 'F64' | 'F8_E4M3' | 'F8_E5M2'
  | 'I8' | 'U8' | 'I16' | 'I32' | 'I64' | 'BOOL';

const BYTES: Record<DType, number> = {
  BF16: 2, F16: 2, F32: 4, F64: 8, F8_E4M3: 1, F8_E5M2: 1,
  I8: 1, U8: 1, I16: 2, I32: 4, I64: 8, BOOL: 1,
};

export const DTYPES = Object.keys(BYTES) as DType[];

export function isDType(s: unknown): s is DType {
  return typeof s === 'string' && Object.hasOwn(BYTES, s);
}

export function dtypeBytes(d: DType): number {
  const n = BYTES[d];
  if (n === undefined) throw new Error(`unknown dtype ${String(d)}`);
  return n;
}

// Typed-array views reinterpret memory in host order; safetensors is little-endian.
if (new Uint8Array(new Uint16Array([1]).buffer)[0] !== 1) {
  throw new Error('tsglang dtype conversion requires a little-endian host');
}

type ViewCtor<T> = new (buf: ArrayBufferLike, byteOffset: number, length: number) => T;

/** A typed view of `bytes`; copies first when the offset is not a multiple of the element size. */
function view<T>(bytes: Uint8Array, size: number, Ctor: ViewCtor<T>, dtype: DType): T {
  if (bytes.byteLength % size !== 0) {
    throw new Error(`${dtype}: byte length ${bytes.byteLength} is not a multiple of ${size}`);
  }
  const b = bytes.byteOffset % size === 0 ? bytes : new Uint8Array(bytes); // new Uint8Array(x) copies
  return new Ctor(b.buffer, b.byteOffset, b.byteLength / size);
}

// Lookup tables, built on first use: 256 entries per fp8 format, 65536 for fp16 (256 KiB).
let e4m3Table: Float32Array | undefined;
let e5m2Table: Float32Array | undefined;
let f16Table: Float32Array | undefined;

/** Decode one sign/exponent/mantissa float with IEEE-like layout (subnormals at exponent 0). */
function decodeMinifloat(bits: number, expBits: number, manBits: number, bias: number): number {
  const sign = (bits >> (expBits + manBits)) & 1 ? -1 : 1;
  const e = (bits >> manBits) & ((1 << expBits) - 1);
  const m = bits & ((1 << manBits) - 1);
  if (e === 0) return sign * m * 2 ** (1 - bias - manBits);
  return sign * (1 + m / (1 << manBits)) * 2 ** (e - bias);
}

function getE4M3(): Float32Array {
  if (!e4m3Table) {
    e4m3Table = new Float32Array(256);
    // OCP e4m3fn: no infinities; only S.1111.111 is NaN, so the top exponent holds finite values up to 448.
    for (let b = 0; b < 256; b++) e4m3Table[b] = (b & 0x7f) === 0x7f ? NaN : decodeMinifloat(b, 4, 3, 7);
  }
  return e4m3Table;
}

function getE5M2(): Float32Array {
  if (!e5m2Table) {
    e5m2Table = new Float32Array(256);
    for (let b = 0; b < 256; b++) {
      const e = (b >> 2) & 0x1f;
      e5m2Table[b] = e === 31 ? ((b & 3) ? NaN : (b & 0x80 ? -Infinity : Infinity)) : decodeMinifloat(b, 5, 2, 15);
    }
  }
  return e5m2Table;
}

function getF16(): Float32Array {
  if (!f16Table) {
    f16Table = new Float32Array(65536);
    for (let h = 0; h < 65536; h++) {
      const e = (h >> 10) & 0x1f;
      f16Table[h] = e === 31 ? ((h & 0x3ff) ? NaN : (h & 0x8000 ? -Infinity : Infinity)) : decodeMinifloat(h, 5, 10, 15);
    }
  }
  return f16Table;
}

function lookup(src: ArrayLike<number>, table: Float32Array): Float32Array {
  const n = src.length;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) out[i] = table[src[i]!]!;
  return out;
}

/** TypedArray.set converts element types natively (much faster than Float32Array.from). */
function widen(src: Float64Array | Int8Array | Uint8Array | Int16Array | Int32Array): Float32Array {
  const out = new Float32Array(src.length);
  out.set(src);
  return out;
}

/** Raw little-endian bytes of `dtype` elements → a new Float32Array. I64 values beyond 2^24 round. */
export function toFloat32(bytes: Uint8Array, dtype: DType): Float32Array {
  switch (dtype) {
    case 'BF16': return bf16ToFloat32(view(bytes, 2, Uint16Array, dtype));
    case 'F16': return lookup(view(bytes, 2, Uint16Array, dtype), getF16());
    case 'F32': return new Float32Array(view(bytes, 4, Float32Array, dtype)); // copy: callers own the result
    case 'F8_E4M3': return lookup(bytes, getE4M3());
    case 'F8_E5M2': return lookup(bytes, getE5M2());
    case 'F64': return widen(view(bytes, 8, Float64Array, dtype));
    case 'I8': return widen(view(bytes, 1, Int8Array, dtype));
    case 'U8': return widen(bytes);
    case 'I16': return widen(view(bytes, 2, Int16Array, dtype));
    case 'I32': return widen(view(bytes, 4, Int32Array, dtype));
    case 'I64': {
      const src = view(bytes, 8, BigInt64Array, dtype);
      const out = new Float32Array(src.length);
      for (let i = 0; i < src.length; i++) out[i] = Number(src[i]!);
      return out;
    }
    case 'BOOL': {
      const out = new Float32Array(bytes.length);
      for (let i = 0; i < bytes.length; i++) out[i] = bytes[i] ? 1 : 0;
      return out;
    }
    default: throw new Error(`toFloat32: unsupported dtype ${String(dtype)}`);
  }
}

/** bf16 is the top half of an fp32: shift each value into the high 16 bits. */
export function bf16ToFloat32(u16: Uint16Array): Float32Array {
  const n = u16.length;
  const out = new Float32Array(n);
  const o32 = new Int32Array(out.buffer); // `<<` yields an int32: store it without conversion
  for (let i = 0; i < n; i++) o32[i] = u16[i]! << 16;
  return out;
}

/** fp32 → bf16 with round-to-nearest-even; NaNs stay NaN (quiet bit set so truncation can't make an Inf). */
export function float32ToBf16(f32: Float32Array): Uint16Array {
  const n = f32.length;
  const src = new Uint32Array(f32.buffer, f32.byteOffset, n);
  const out = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    const x = src[i]!;
    if ((x & 0x7fffffff) > 0x7f800000) out[i] = (x >>> 16) | 0x0040;
    else out[i] = (x + 0x7fff + ((x >>> 16) & 1)) >>> 16; // largest finite x + 0x8000 stays < 2^32
  }
  return out;
}
