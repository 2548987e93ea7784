// Picks the compute backend from --device and --attention-backend, as SGLang picks by hardware:
// Hopper (sm90) → fa3 (our Hopper kernels), other NVIDIA GPUs → cuda, no GPU → cpu.

import type { Backend } from "./backend.js";
import { CpuBackend } from "./cpu.js";

export type Device = "auto" | "cuda" | "cpu";
export type AttentionBackend = "auto" | "fa3" | "cuda" | "cpu";

const OURS = ["auto", "fa3", "cuda", "cpu"];
const SGLANG_ONLY = ["triton", "trtllm_mha", "aiter", "intel_xpu", "flashinfer", "torch_native", "flex_attention", "flashmla", "cutlass_mla", "fa4"];

export function parseAttentionBackend(name: string): AttentionBackend {
  if (OURS.includes(name)) return name as AttentionBackend;
  const known = SGLANG_ONLY.includes(name) ? ` ('${name}' is an SGLang backend tsglang does not have)` : "";
  throw new Error(`--attention-backend ${name} is not available${known}; choose one of: ${OURS.join(", ")}`);
}

export function parseDevice(name: string): Device {
  if (name === "auto" || name === "cuda" || name === "cpu") return name;
  throw new Error(`--device ${name} is not available; choose one of: auto, cuda, cpu`);
}

export interface BackendChoice {
  backend: Backend;
  device: "cuda" | "cpu";
  attention: Exclude<AttentionBackend, "auto">;
  description: string;
}

/** What src/runtime/cuda/backend.ts provides; loaded lazily so CPU-only installs never touch it. */
interface CudaModule {
  cudaDeviceCount(): number;
  cudaDeviceInfo(device?: number): GpuInfo;
  createCudaBackendChoice(attention: AttentionBackend): Promise<BackendChoice>;
}

async function loadCuda(): Promise<CudaModule> {
  const path = "./cuda/backend.js";
  return (await import(path)) as CudaModule;
}

export async function createBackend(device: Device, attention: AttentionBackend = "auto"): Promise<BackendChoice> {
  if (device === "cpu" || (device === "auto" && !(await cudaPresent()))) {
    if (attention !== "auto" && attention !== "cpu") throw new Error(`--attention-backend ${attention} needs --device cuda`);
    return { backend: new CpuBackend(), device: "cpu", attention: "cpu", description: "cpu (TypeScript, fp32)" };
  }
  if (attention === "cpu") throw new Error("--attention-backend cpu needs --device cpu");
  return (await loadCuda()).createCudaBackendChoice(attention);
}

export interface GpuInfo {
  name: string;
  totalBytes: number;
  ccMajor: number;
}

/** The attention kernels `auto` means on this GPU: the fa3 kernels on Hopper, else the portable ones. */
export function cudaAttentionFor(attention: AttentionBackend, gpu: GpuInfo): "fa3" | "cuda" {
  if (attention === "cpu") throw new Error("--attention-backend cpu needs --device cpu");
  return attention === "auto" ? (gpu.ccMajor === 9 ? "fa3" : "cuda") : attention;
}

/** The GPU that `device` would run on (its name, memory, compute capability), or null when it runs on the CPU. */
export async function gpuFor(device: Device): Promise<GpuInfo | null> {
  if (device === "cpu" || (device === "auto" && !(await cudaPresent()))) return null;
  return (await loadCuda()).cudaDeviceInfo(0);
}

/** True when the native addon loads and sees a CUDA device. */
async function cudaPresent(): Promise<boolean> {
  try {
    return (await loadCuda()).cudaDeviceCount() > 0;
  } catch {
    return false;
  }
}
