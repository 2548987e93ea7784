// Field readers for JSON request bodies. Each checks one field's type and range and throws a
// 400 that names the field, so handlers read as a list of fields with their rules.

import { badRequest } from "./errors.js";

export type Json = Record<string, unknown>;

export function isObject(v: unknown): v is Json {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

export function requireObject(v: unknown, param: string | null = null): Json {
  if (!isObject(v)) throw badRequest(`${param ?? "the request body"} must be a JSON object`, param);
  return v;
}

// null counts as absent: OpenAI clients send explicit nulls for unset fields.
function present(o: Json, key: string): boolean {
  return o[key] !== undefined && o[key] !== null;
}

const typeName = (v: unknown) => (v === null ? "null" : Array.isArray(v) ? "array" : typeof v);

function wrongType(key: string, want: string, v: unknown) {
  return badRequest(`'${key}' must be ${want}; got ${typeName(v)}`, key, "invalid_type");
}

export function optBool(o: Json, key: string, dflt: boolean): boolean {
  if (!present(o, key)) return dflt;
  const v = o[key];
  if (typeof v !== "boolean") throw wrongType(key, "a boolean", v);
  return v;
}

/**
 * `stream` and its `stream_options` (chat and completions alike): include_usage adds a usage
 * chunk at the end, continuous_usage_stats (with it) the usage so far on every chunk.
 */
export function streamOptions(o: Json): { stream: boolean; includeUsage: boolean; continuousUsage: boolean } {
  const stream = optBool(o, "stream", false);
  const so = o.stream_options;
  const includeUsage = stream && isObject(so) && optBool(so, "include_usage", false);
  const continuousUsage = includeUsage && isObject(so) && optBool(so, "continuous_usage_stats", false);
  return { stream, includeUsage, continuousUsage };
}

export function optString(o: Json, key: string): string | undefined {
  if (!present(o, key)) return undefined;
  const v = o[key];
  if (typeof v !== "string") throw wrongType(key, "a string", v);
  return v;
}

export interface Range {
  /** Inclusive bounds. */
  min?: number;
  max?: number;
  /** Exclusive bounds. */
  gt?: number;
  lt?: number;
}

function checkRange(key: string, v: number, r: Range): number {
  const fail = (rule: string) => badRequest(`'${key}' must be ${rule}; got ${v}`, key, "invalid_value");
  if (r.min !== undefined && v < r.min) throw fail(`>= ${r.min}`);
  if (r.max !== undefined && v > r.max) throw fail(`<= ${r.max}`);
  if (r.gt !== undefined && v <= r.gt) throw fail(`> ${r.gt}`);
  if (r.lt !== undefined && v >= r.lt) throw fail(`< ${r.lt}`);
  return v;
}

export function optNumber(o: Json, key: string, dflt: number, r?: Range): number;
export function optNumber(o: Json, key: string, dflt: undefined, r?: Range): number | undefined;
export function optNumber(o: Json, key: string, dflt: number | undefined, r: Range = {}): number | undefined {
  if (!present(o, key)) return dflt;
  const v = o[key];
  if (typeof v !== "number" || !Number.isFinite(v)) throw wrongType(key, "a number", v);
  return checkRange(key, v, r);
}

export function optInt(o: Json, key: string, dflt: number, r?: Range): number;
export function optInt(o: Json, key: string, dflt: number | undefined, r?: Range): number | undefined;
export function optInt(o: Json, key: string, dflt: number | undefined, r: Range = {}): number | undefined {
  if (!present(o, key)) return dflt;
  const v = o[key];
  if (typeof v !== "number" || !Number.isInteger(v)) throw wrongType(key, "an integer", v);
  return checkRange(key, v, r);
}

/** A string or a list of strings (OpenAI `stop`); empty strings are dropped. */
export function optStringList(o: Json, key: string): string[] {
  if (!present(o, key)) return [];
  const v = o[key];
  const list = typeof v === "string" ? [v] : v;
  if (!Array.isArray(list) || !list.every((s) => typeof s === "string")) {
    throw wrongType(key, "a string or an array of strings", v);
  }
  return (list as string[]).filter((s) => s.length > 0);
}

/** A list of token ids, each in [0, vocabSize). */
export function optIdList(o: Json, key: string, vocabSize: number): number[] {
  if (!present(o, key)) return [];
  const v = o[key];
  if (!Array.isArray(v) || !v.every((x) => Number.isInteger(x))) throw wrongType(key, "an array of integers", v);
  checkIds(v as number[], key, vocabSize);
  return v as number[];
}

export function checkIds(ids: readonly number[], param: string, vocabSize: number): void {
  const bad = ids.find((id) => id < 0 || id >= vocabSize);
  if (bad !== undefined) {
    throw badRequest(`token id ${bad} in '${param}' is out of the vocabulary [0, ${vocabSize})`, param, "invalid_value");
  }
}
