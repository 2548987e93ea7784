// The profiling stamp of kernel_stamps.ts (TSGLANG_KERNEL_STAMPS): one thread stores the GPU's
// global timer (ns) once the kernel before it has ended — it waits at its PDL gate like every
// kernel — so consecutive stamps in a replayed CUDA graph time the kernel between them.
// Roofline: none; a launch's worth of latency (the tool reports a stamp alone to subtract).
#include "common.cuh"

extern "C" __global__ void stamp_globaltimer(unsigned long long* out) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  *out = globalTimerNs();
}
