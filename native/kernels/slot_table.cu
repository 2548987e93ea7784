// The per-sequence slot tables' device copy (src/runtime/slot_tables.ts, SeqSpan): each step's
// additions arrive as one run per sequence and pool — [table index of its first position
// (row · context + position), length, offset into `slots`] — and the runs' slots.
// A gone SWA slot (-1: outside the live chunk) is stored as the pool's spare slot, so every
// entry a kernel can read is a slot inside the pool.
// Roofline: 4 bytes read and 4 written per new position; a decode step has one position per
// sequence, so this is one small launch per pool and step, whatever the context length.
// Grid: (runs, blocks per run); each block strides over its run.
#include "common.cuh"

extern "C" __global__ void slot_table_write(int* __restrict__ table, const int3* __restrict__ runs, const int* __restrict__ slots, int spare) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  const int3 r = runs[blockIdx.x];
  for (int i = blockIdx.y * blockDim.x + threadIdx.x; i < r.y; i += gridDim.y * blockDim.x) {
    const int s = slots[r.z + i];
    table[r.x + i] = s < 0 ? spare : s;
  }
}
