// The per-sequence slot tables' device copy (src/runtime/slot_tables.ts, SeqSpan): each step's
// additions arrive as (row · context + position, slot) pairs, one per new position and pool.
// A gone SWA slot (-1: outside the live chunk) is stored as the pool's spare slot, so every
// entry a kernel can read is a slot inside the pool.
// Roofline: 8 bytes read and 4 written per pair; a decode step has one pair per sequence, so
// this is one small launch per pool and step, whatever the context length.
#include "common.cuh"

extern "C" __global__ void slot_table_write(int* __restrict__ table, const int2* __restrict__ pairs, int n, int spare) {
  gridDependencyWait();
  gridDependencyLaunchDependents();
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int2 p = pairs[i];
  table[p.x] = p.y < 0 ? spare : p.y;
}
