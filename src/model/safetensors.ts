// Streaming safetensors reader and writer. Opening a checkpoint reads only each shard's 8-byte
// header length and JSON header; tensor data is read on demand with positioned reads, so a
// 217 GB checkpoint never passes through the JS heap as a whole. A tensor-parallel rank reads
// only its part of a tensor (`readSelection`): the bytes of a selection are a list of strided
// runs in the file, and only those runs are read.
//
// Format: u64 little-endian N, then N bytes of UTF-8 JSON {name: {dtype, shape, data_offsets:
// [begin, end]}, "__metadata__"?: {string: string}}, then the data section; offsets are relative
// to the start of the data section (8 + N).

import * as fs from 'node:fs';
import * as fsp from 'node:fs/promises';
import type { FileHandle } from 'node:fs/promises';
import * as path from 'node:path';
import { type DType, dtypeBytes, isDType, toFloat32 } from '../runtime/dtype.js';

export interface TensorInfo {
  name: string;
  dtype: DType;
  shape: number[];
  file: string;
  /** Absolute byte offset of the data in `file`. */
  offset: number;
  byteLength: number;
}

/** Ranges [start, length) kept along a dim, concatenated in the order given; dims not listed are kept whole. */
export type Selection = Record<number, [number, number][]>;

/** Raw little-endian bytes of (part of) a tensor, row-major. */
export interface TensorBytes {
  dtype: DType;
  shape: number[];
  data: Uint8Array;
}

export interface TensorToWrite {
  name: string;
  dtype: DType;
  shape: number[];
  data: Uint8Array;
}

const INDEX_FILE = 'model.safetensors.index.json';
// fs reads and writes take at most 2 GiB - 1 per call; big tensors (embeddings) go in chunks.
const IO_CHUNK = 1 << 30;
// The reference implementation rejects larger headers; it also keeps a corrupt length from allocating GBs.
const MAX_HEADER = 100_000_000;
// How the runs of a selection are read. A rank's share of a column-split tensor is one short run
// per outer row (o_proj at TP8: 1280 bytes of every 10 KiB row; the fused experts' gate_up at
// TP8: two 2 KiB runs of every 32 KiB row, over a million runs per Maverick layer). Reading the
// span around them and slicing would copy every other rank's bytes as well (8x the data at
// TP8), so each run gets its own positioned read, and the cost to keep down is per read:
// - runs of at least LARGE_RUN go through an async read straight into the result; the fixed
//   cost of an async read (a promise, a hop through libuv's thread pool, which has 4 threads
//   shared by every rank thread of the process) is small next to moving a MiB;
// - shorter runs are read synchronously on the calling (rank) thread, a plain pread each, in
//   batches of up to SYNC_BATCH_BYTES / SYNC_BATCH_READS, yielding to the event loop between
//   batches so the thread stays responsive.
// Runs that touch in the file (rows of a row split, whole experts, ranges that meet) are merged
// into one read first.
const LARGE_RUN = 1 << 20;
const SYNC_BATCH_BYTES = 64 << 20;
const SYNC_BATCH_READS = 16384;

const numel = (shape: number[]) => shape.reduce((a, b) => a * b, 1);
const fmtShape = (shape: number[]) => `[${shape.join(', ')}]`;

/** Fills `buf` from `position`; returns the number of read calls it took. */
async function readExactly(fh: FileHandle, buf: Uint8Array, position: number, file: string): Promise<number> {
  let calls = 0;
  for (let done = 0; done < buf.byteLength; calls++) {
    const len = Math.min(IO_CHUNK, buf.byteLength - done);
    const { bytesRead } = await fh.read(buf, done, len, position + done);
    if (bytesRead === 0) throw new Error(`${file}: unexpected end of file at byte ${position + done}`);
    done += bytesRead;
  }
  return calls;
}

/** `readExactly` with blocking reads, for short runs (below LARGE_RUN, so no chunking needed). */
function readExactlySync(fd: number, buf: Uint8Array, position: number, file: string): number {
  let calls = 0;
  for (let done = 0; done < buf.byteLength; calls++) {
    const bytesRead = fs.readSync(fd, buf, done, buf.byteLength - done, position + done);
    if (bytesRead === 0) throw new Error(`${file}: unexpected end of file at byte ${position + done}`);
    done += bytesRead;
  }
  return calls;
}

const yieldToEventLoop = () => new Promise<void>((resolve) => setImmediate(resolve));

async function writeAll(fh: FileHandle, buf: Uint8Array): Promise<void> {
  for (let done = 0; done < buf.byteLength;) {
    const { bytesWritten } = await fh.write(buf, done, Math.min(IO_CHUNK, buf.byteLength - done));
    done += bytesWritten;
  }
}

interface Shard {
  tensors: TensorInfo[];
  metadata: Record<string, string>;
}

/** Read and validate one file's header; errors name the file (and tensor). */
async function readShardHeader(file: string): Promise<Shard> {
  const fh = await fsp.open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    if (size < 8) throw new Error(`${file}: not a safetensors file (${size} bytes, shorter than the 8-byte header length)`);
    const lenBuf = Buffer.alloc(8);
    await readExactly(fh, lenBuf, 0, file);
    const headerLen = lenBuf.readBigUInt64LE(0);
    if (headerLen > BigInt(size - 8)) {
      throw new Error(`${file}: header length ${headerLen} is larger than the file (${size} bytes); corrupt or not safetensors`);
    }
    if (headerLen > BigInt(MAX_HEADER)) throw new Error(`${file}: header length ${headerLen} exceeds ${MAX_HEADER} bytes; corrupt?`);
    const headerBuf = Buffer.alloc(Number(headerLen));
    await readExactly(fh, headerBuf, 8, file);
    let header: unknown;
    try {
      header = JSON.parse(headerBuf.toString('utf8'));
    } catch (e) {
      throw new Error(`${file}: header is not valid JSON (${(e as Error).message})`);
    }
    if (typeof header !== 'object' || header === null || Array.isArray(header)) {
      throw new Error(`${file}: header is not a JSON object`);
    }
    const dataStart = 8 + Number(headerLen);
    const dataSize = size - dataStart;
    const tensors: TensorInfo[] = [];
    let metadata: Record<string, string> = {};
    for (const [name, entry] of Object.entries(header as Record<string, unknown>)) {
      if (name === '__metadata__') {
        if (typeof entry !== 'object' || entry === null || Array.isArray(entry)) {
          throw new Error(`${file}: __metadata__ is not an object`);
        }
        metadata = entry as Record<string, string>;
        continue;
      }
      tensors.push(parseEntry(file, name, entry, dataStart, dataSize));
    }
    return { tensors, metadata };
  } finally {
    await fh.close();
  }
}

function parseEntry(file: string, name: string, entry: unknown, dataStart: number, dataSize: number): TensorInfo {
  const where = `${file}: tensor '${name}'`;
  if (typeof entry !== 'object' || entry === null) throw new Error(`${where}: entry is not an object`);
  const { dtype, shape, data_offsets: offs } = entry as Record<string, unknown>;
  if (!isDType(dtype)) throw new Error(`${where}: unknown dtype ${JSON.stringify(dtype)}`);
  if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new Error(`${where}: shape ${JSON.stringify(shape)} is not a list of non-negative integers`);
  }
  if (!Array.isArray(offs) || offs.length !== 2 || !offs.every((o) => Number.isSafeInteger(o) && o >= 0)) {
    throw new Error(`${where}: data_offsets ${JSON.stringify(offs)} is not [begin, end] integers`);
  }
  const [begin, end] = offs as [number, number];
  if (end < begin) throw new Error(`${where}: data_offsets end ${end} < begin ${begin}`);
  const want = numel(shape) * dtypeBytes(dtype);
  if (end - begin !== want) {
    throw new Error(`${where}: ${end - begin} data bytes but shape ${fmtShape(shape)} of ${dtype} needs ${want}`);
  }
  if (end > dataSize) {
    throw new Error(`${where}: data ends at ${end} but the data section has only ${dataSize} bytes (truncated file?)`);
  }
  return { name, dtype, shape: shape as number[], file, offset: dataStart + begin, byteLength: want };
}

async function exists(p: string): Promise<boolean> {
  return fsp.access(p).then(() => true, () => false);
}

/** Shard files of a checkpoint directory, plus the index's weight_map when there is one. */
async function listShards(dir: string): Promise<{ files: string[]; weightMap?: Record<string, string> }> {
  const indexPath = path.join(dir, INDEX_FILE);
  if (await exists(indexPath)) {
    let index: unknown;
    try {
      index = JSON.parse(await fsp.readFile(indexPath, 'utf8'));
    } catch (e) {
      throw new Error(`${indexPath}: not valid JSON (${(e as Error).message})`);
    }
    const wm = (index as { weight_map?: unknown } | null)?.weight_map;
    if (typeof wm !== 'object' || wm === null || Array.isArray(wm) ||
        !Object.values(wm).every((v) => typeof v === 'string')) {
      throw new Error(`${indexPath}: malformed, expected {"weight_map": {tensor name: shard file}}`);
    }
    const weightMap = wm as Record<string, string>;
    const files = [...new Set(Object.values(weightMap))].map((f) => path.join(dir, f));
    for (const f of files) {
      if (!(await exists(f))) throw new Error(`${indexPath}: shard file ${path.basename(f)} is missing (${f})`);
    }
    return { files, weightMap };
  }
  if (await exists(path.join(dir, 'model.safetensors'))) return { files: [path.join(dir, 'model.safetensors')] };
  const files = (await fsp.readdir(dir)).filter((f) => f.endsWith('.safetensors')).sort().map((f) => path.join(dir, f));
  if (files.length === 0) throw new Error(`${dir}: no ${INDEX_FILE}, model.safetensors or *.safetensors files`);
  return { files };
}

function editDistance(a: string, b: string): number {
  let prev = Array.from({ length: b.length + 1 }, (_, j) => j);
  for (let i = 1; i <= a.length; i++) {
    const cur = [i];
    for (let j = 1; j <= b.length; j++) {
      cur[j] = Math.min(prev[j]! + 1, cur[j - 1]! + 1, prev[j - 1]! + (a[i - 1] === b[j - 1] ? 0 : 1));
    }
    prev = cur;
  }
  return prev[b.length]!;
}

/**
 * The file byte runs [offset, length, offset, length, ...] that hold selection `sel` of tensor
 * `t`, in row-major order of the result, with runs that touch merged; and the result's shape.
 *
 * Dims after the innermost partly-selected dim k are whole, so each selected range along k is one
 * contiguous run of (range length x bytes per index of k); the dims before k are walked index by
 * index, each combination giving one run per range along k.
 */
function planRuns(t: TensorInfo, sel: Selection): { shape: number[]; runs: number[] } {
  const where = `${t.file}: tensor '${t.name}'`;
  const rank = t.shape.length;
  for (const key of Object.keys(sel)) {
    const dim = Number(key);
    if (!Number.isInteger(dim) || dim < 0 || dim >= rank) {
      throw new Error(`${where}: cannot select along dim ${key} of shape ${fmtShape(t.shape)}`);
    }
  }
  // Per dim: the kept ranges, empty ones dropped and ranges that meet joined.
  const ranges = t.shape.map((size, dim) => {
    const wanted = sel[dim] ?? [[0, size]];
    const out: [number, number][] = [];
    for (const [start, n] of wanted) {
      if (!Number.isSafeInteger(start) || !Number.isSafeInteger(n) || start < 0 || n < 0 || start + n > size) {
        throw new Error(`${where}: selection [${start}, +${n}) along dim ${dim} is out of range for shape ${fmtShape(t.shape)}`);
      }
      if (n === 0) continue;
      const last = out[out.length - 1];
      if (last && last[0] + last[1] === start) last[1] += n;
      else out.push([start, n]);
    }
    return out;
  });
  const shape = ranges.map((rs) => rs.reduce((a, [, n]) => a + n, 0));
  const runs: number[] = [];
  if (shape.some((d) => d === 0)) return { shape, runs };
  const elem = dtypeBytes(t.dtype);
  const stride = t.shape.map((_, dim) => numel(t.shape.slice(dim + 1)) * elem);
  let k = rank - 1;
  while (k >= 0 && ranges[k]!.length === 1 && ranges[k]![0]![0] === 0 && ranges[k]![0]![1] === t.shape[k]) k--;
  if (k < 0) return { shape, runs: [t.offset, t.byteLength] };
  const push = (offset: number, length: number) => {
    const n = runs.length;
    if (n > 0 && runs[n - 2]! + runs[n - 1]! === offset) runs[n - 1] = runs[n - 1]! + length;
    else runs.push(offset, length);
  };
  const walk = (dim: number, base: number): void => {
    if (dim === k) {
      for (const [start, n] of ranges[k]!) push(base + start * stride[k]!, n * stride[k]!);
      return;
    }
    for (const [start, n] of ranges[dim]!) {
      for (let i = start; i < start + n; i++) walk(dim + 1, base + i * stride[dim]!);
    }
  };
  walk(0, t.offset);
  return { shape, runs };
}

export class Checkpoint {
  /** The checkpoint's directory (for a single-file path, its parent). */
  readonly dir: string;
  /** Merged `__metadata__` of all shards. */
  readonly metadata: Record<string, string>;
  /** Tensor data bytes read so far (headers not counted): what loading progress reports. */
  bytesRead = 0;
  /** Read calls made for tensor data so far. */
  readCalls = 0;
  private readonly tensors: Map<string, TensorInfo>;
  private readonly handles = new Map<string, Promise<FileHandle>>();

  private constructor(dir: string, tensors: Map<string, TensorInfo>, metadata: Record<string, string>) {
    this.dir = dir;
    this.tensors = tensors;
    this.metadata = metadata;
  }

  static async open(pathOrDir: string): Promise<Checkpoint> {
    const p = path.resolve(pathOrDir);
    const st = await fsp.stat(p).catch(() => { throw new Error(`checkpoint ${p} does not exist`); });
    const dir = st.isDirectory() ? p : path.dirname(p);
    const { files, weightMap } = st.isDirectory() ? await listShards(p) : { files: [p], weightMap: undefined };
    const shards = await Promise.all(files.map(readShardHeader));
    const tensors = new Map<string, TensorInfo>();
    const metadata: Record<string, string> = {};
    for (const shard of shards) {
      Object.assign(metadata, shard.metadata);
      for (const t of shard.tensors) {
        const prev = tensors.get(t.name);
        if (prev) throw new Error(`duplicate tensor '${t.name}' in ${prev.file} and ${t.file}`);
        tensors.set(t.name, t);
      }
    }
    if (weightMap) {
      for (const [name, file] of Object.entries(weightMap)) {
        const t = tensors.get(name);
        if (!t || path.basename(t.file) !== path.basename(file)) {
          throw new Error(`${path.join(dir, INDEX_FILE)}: maps tensor '${name}' to ${file}, but ` +
            (t ? `it is in ${t.file}` : `no shard contains it`));
        }
      }
    }
    return new Checkpoint(dir, tensors, metadata);
  }

  names(): string[] {
    return [...this.tensors.keys()];
  }

  has(name: string): boolean {
    return this.tensors.has(name);
  }

  info(name: string): TensorInfo {
    const t = this.tensors.get(name);
    if (t) return t;
    const close = [...this.tensors.keys()]
      .filter((n) => Math.abs(n.length - name.length) <= Math.ceil(name.length / 4))
      .map((n) => ({ n, d: editDistance(n, name) }))
      .filter(({ d }) => d <= Math.ceil(name.length / 4))
      .sort((a, b) => a.d - b.d)
      .slice(0, 5)
      .map(({ n }) => n);
    throw new Error(`tensor '${name}' not found in checkpoint ${this.dir}` +
      (close.length ? `; close names: ${close.join(', ')}` : ''));
  }

  /** The tensor's exact bytes. */
  async read(name: string): Promise<Uint8Array> {
    return (await this.readSelection(name)).data;
  }

  /** Bytes of rows [dim0Start, dim0Start + dim0Count) along the first dimension. */
  async readSlice(name: string, dim0Start: number, dim0Count: number): Promise<Uint8Array> {
    return (await this.readSelection(name, { 0: [[dim0Start, dim0Count]] })).data;
  }

  /**
   * The selected part of a tensor (row-major, ranges along a dim concatenated in the given
   * order), reading from the file only the bytes that belong to it.
   */
  async readSelection(name: string, sel: Selection = {}): Promise<TensorBytes> {
    const t = this.info(name);
    const { shape, runs } = planRuns(t, sel);
    const data = new Uint8Array(numel(shape) * dtypeBytes(t.dtype)); // offset 0, so dtype views need no copy
    if (runs.length > 0) await this.readRuns(t.file, runs, data);
    return { dtype: t.dtype, shape, data };
  }

  /** The tensor converted to fp32; checks the shape first when `expectShape` is given. */
  async readF32(name: string, expectShape?: number[]): Promise<Float32Array> {
    const t = this.info(name);
    if (expectShape && (expectShape.length !== t.shape.length || expectShape.some((d, i) => d !== t.shape[i]))) {
      throw new Error(`${t.file}: tensor '${name}' has shape ${fmtShape(t.shape)}, expected ${fmtShape(expectShape)}`);
    }
    return toFloat32(await this.read(name), t.dtype);
  }

  async close(): Promise<void> {
    const hs = [...this.handles.values()];
    this.handles.clear();
    await Promise.all(hs.map((h) => h.then((f) => f.close(), () => {})));
  }

  private handle(file: string): Promise<FileHandle> {
    let h = this.handles.get(file);
    if (!h) {
      h = fsp.open(file, 'r');
      this.handles.set(file, h);
      h.catch(() => this.handles.delete(file)); // let a later read retry
    }
    return h;
  }

  /** Reads `runs` (see planRuns) of `file` back to back into `out`; LARGE_RUN says why two kinds of read. */
  private async readRuns(file: string, runs: number[], out: Uint8Array): Promise<void> {
    const fh = await this.handle(file);
    let o = 0;
    let batchBytes = 0;
    let batchReads = 0;
    for (let i = 0; i < runs.length; i += 2) {
      const position = runs[i]!;
      const dst = out.subarray(o, o + runs[i + 1]!);
      o += dst.byteLength;
      if (dst.byteLength >= LARGE_RUN) {
        this.readCalls += await readExactly(fh, dst, position, file);
        this.bytesRead += dst.byteLength;
        continue;
      }
      this.readCalls += readExactlySync(fh.fd, dst, position, file);
      this.bytesRead += dst.byteLength;
      batchBytes += dst.byteLength;
      if (++batchReads >= SYNC_BATCH_READS || batchBytes >= SYNC_BATCH_BYTES) {
        batchBytes = batchReads = 0;
        await yieldToEventLoop();
      }
    }
  }
}

/** Write one safetensors file: header padded with spaces to 8 bytes, tensors in the given order. */
export async function writeSafetensors(file: string, tensors: TensorToWrite[], metadata?: Record<string, string>): Promise<void> {
  const header: Record<string, unknown> = {};
  if (metadata) header.__metadata__ = metadata;
  let pos = 0;
  for (const t of tensors) {
    if (t.name === '__metadata__' || Object.hasOwn(header, t.name)) throw new Error(`${file}: bad or duplicate tensor name '${t.name}'`);
    const want = numel(t.shape) * dtypeBytes(t.dtype);
    if (t.data.byteLength !== want) {
      throw new Error(`${file}: tensor '${t.name}' has ${t.data.byteLength} bytes, shape ${fmtShape(t.shape)} of ${t.dtype} needs ${want}`);
    }
    header[t.name] = { dtype: t.dtype, shape: t.shape, data_offsets: [pos, pos + want] };
    pos += want;
  }
  const json = Buffer.from(JSON.stringify(header), 'utf8');
  const padded = Buffer.alloc(Math.ceil(json.length / 8) * 8, 0x20); // aligned data section
  json.copy(padded);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(padded.length));
  const fh = await fsp.open(file, 'w');
  try {
    await writeAll(fh, len);
    await writeAll(fh, padded);
    for (const t of tensors) await writeAll(fh, t.data);
  } finally {
    await fh.close();
  }
}

/** Split `tensors` (in order) into shards of at most `maxShardBytes` (one oversized tensor gets
 * its own shard), written as model-0000i-of-0000N.safetensors plus model.safetensors.index.json. */
export async function writeShardedCheckpoint(dir: string, tensors: TensorToWrite[], maxShardBytes: number): Promise<string[]> {
  const shards: TensorToWrite[][] = [];
  let size = 0;
  for (const t of tensors) {
    if (shards.length === 0 || (size > 0 && size + t.data.byteLength > maxShardBytes)) {
      shards.push([]);
      size = 0;
    }
    shards[shards.length - 1]!.push(t);
    size += t.data.byteLength;
  }
  await fsp.mkdir(dir, { recursive: true });
  const pad = (i: number) => String(i).padStart(5, '0');
  const names = shards.map((_, i) => `model-${pad(i + 1)}-of-${pad(shards.length)}.safetensors`);
  const weightMap: Record<string, string> = {};
  for (let i = 0; i < shards.length; i++) {
    for (const t of shards[i]!) weightMap[t.name] = names[i]!;
    await writeSafetensors(path.join(dir, names[i]!), shards[i]!, { format: 'pt' });
  }
  const totalSize = tensors.reduce((a, t) => a + t.data.byteLength, 0);
  await fsp.writeFile(path.join(dir, INDEX_FILE), JSON.stringify({ metadata: { total_size: totalSize }, weight_map: weightMap }, null, 2));
  return names.map((n) => path.join(dir, n));
}
